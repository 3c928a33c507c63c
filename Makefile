# Two commands for developers (both set up .venv/ first, idempotently):
#   make run [MODELS=/path/to/ComfyUI/models] [WORKFLOW=workflows/ezigen_single_pass.json]
#   make test
PY := .venv/bin/python
WORKFLOW ?= workflows/ezigen_single_pass.json

.PHONY: env run test
env:
	@bash scripts/setup_env.sh

run: env
	$(PY) scripts/run_workflow.py --workflow $(WORKFLOW) $(if $(MODELS),--models $(MODELS))

test: env
	$(PY) -m pytest $(PYTEST_ARGS)
