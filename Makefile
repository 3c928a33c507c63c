# Commands for developers (each sets up the host's venv first, idempotently):
#   make run [HOST=0.3.75|0.8.0] [MODELS=/path/to/ComfyUI/models] [WORKFLOW=workflows/ezigen_single_pass.json]
#   make test [HOST=0.3.75|0.8.0]     (make test-all: both hosts, as CI does)
#   make unit [HOST=0.3.75|0.8.0]     the quick check: tests/unit without the tests marked slow (make test runs all)
HOST ?= 0.3.75
VENV := $(if $(filter 0.3.75,$(HOST)),.venv,.venv-$(HOST))
PY := $(VENV)/bin/python
WORKFLOW ?= workflows/ezigen_single_pass.json
export HOST

.PHONY: env run test test-all unit
env:
	@bash scripts/setup_env.sh

run: env
	$(PY) scripts/run_workflow.py --workflow $(WORKFLOW) $(if $(MODELS),--models $(MODELS))

test: env
	@echo "[test] ComfyUI $(HOST) ($(VENV))"
	$(PY) -m pytest $(PYTEST_ARGS)

# PYTEST_ARGS naming test files or folders (tests/...) runs just those; otherwise all of tests/unit.
UNIT_PATHS = $(if $(filter tests/%,$(PYTEST_ARGS)),,tests/unit)

# One torch thread unless OMP_NUM_THREADS says otherwise: on the tiny unit-test models, two threads fighting over
# two busy cores were far slower (measured on a loaded 2-core machine: the whole unit suite 23 min against 4 min).
unit: env
	@echo "[unit] ComfyUI $(HOST) ($(VENV)), without the slow tests"
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest $(UNIT_PATHS) -m "not slow" $(PYTEST_ARGS)

# Every host, even after a failure; fails if any failed.
test-all:
	@status=0; for h in 0.3.75 0.8.0; do $(MAKE) --no-print-directory test HOST=$$h || status=1; done; exit $$status
