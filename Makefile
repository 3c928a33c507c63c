# Commands for developers (each sets up the host's venv first, idempotently):
#   make run [HOST=0.3.75|0.8.0|0.28.2] [MODELS=/path/to/ComfyUI/models] [WORKFLOW=workflows/ezigen_single_pass.json]
#   make test [HOST=...]     the whole suite on one host (make test-all: every host, as CI does)
#   make unit [HOST=...]     the quick check: tests/unit without the tests marked slow (make test runs all);
#                            PYTEST_ARGS naming tests (tests/...) runs just those, e.g. PYTEST_ARGS=tests/unit/test_crop.py
HOST ?= 0.3.75
VENV := $(if $(filter 0.3.75,$(HOST)),.venv,.venv-$(HOST))
PY := $(VENV)/bin/python
WORKFLOW ?= workflows/ezigen_single_pass.json
# The declared floor and the newest release run everything (server, browser, Manager, registry zip);
# 0.8.0, in between, runs the unit tests and the server tests of the method (see README, "Tests").
FULL_HOSTS := 0.3.75 0.28.2
MIDDLE_HOSTS := 0.8.0
MIDDLE_E2E := tests/e2e/test_single_pass.py tests/e2e/test_generate.py tests/e2e/test_edit.py \
	tests/e2e/test_two_subjects.py tests/e2e/test_mask_follows_the_image.py tests/e2e/test_subjects.py
export HOST

.PHONY: env run test test-all unit
env:
	@bash scripts/setup_env.sh

run: env
	$(PY) scripts/run_workflow.py --workflow $(WORKFLOW) $(if $(MODELS),--models $(MODELS))

test: env
	@echo "[test] ComfyUI $(HOST) ($(VENV))"
	$(PY) -m pytest $(PYTEST_ARGS)

# One torch thread unless OMP_NUM_THREADS says otherwise: on the tiny unit-test models, two threads fighting over
# two busy cores were far slower (measured on a loaded 2-core machine: the whole unit suite 23 min against 4 min).
unit: env
	@echo "[unit] ComfyUI $(HOST) ($(VENV)), without the slow tests"
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -m "not slow" \
		$(if $(filter tests/%,$(PYTEST_ARGS)),,tests/unit) $(PYTEST_ARGS)

# Every host, even after a failure; fails if any failed.
test-all:
	@status=0; \
	for h in $(FULL_HOSTS); do $(MAKE) --no-print-directory test HOST=$$h || status=1; done; \
	for h in $(MIDDLE_HOSTS); do \
		$(MAKE) --no-print-directory test HOST=$$h PYTEST_ARGS="tests/unit $(MIDDLE_E2E)" || status=1; done; \
	exit $$status
