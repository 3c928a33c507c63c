# Two commands for developers (both set up the host's venv first, idempotently):
#   make run [HOST=0.3.75|0.8.0] [MODELS=/path/to/ComfyUI/models] [WORKFLOW=workflows/ezigen_single_pass.json]
#   make test [HOST=0.3.75|0.8.0]     (make test-all: both hosts, as CI does)
HOST ?= 0.3.75
VENV := $(if $(filter 0.3.75,$(HOST)),.venv,.venv-$(HOST))
PY := $(VENV)/bin/python
WORKFLOW ?= workflows/ezigen_single_pass.json
export HOST

.PHONY: env run test test-all
env:
	@bash scripts/setup_env.sh

run: env
	$(PY) scripts/run_workflow.py --workflow $(WORKFLOW) $(if $(MODELS),--models $(MODELS))

test: env
	@echo "[test] ComfyUI $(HOST) ($(VENV))"
	$(PY) -m pytest $(PYTEST_ARGS)

# Every host, even after a failure; fails if any failed.
test-all:
	@status=0; for h in 0.3.75 0.8.0; do $(MAKE) --no-print-directory test HOST=$$h || status=1; done; exit $$status
