# medsweep developer commands. `make help` lists them.
PYTHON ?= python
VENV ?= .venv

.DEFAULT_GOAL := help
.PHONY: help install test test-slow test-faults smoke sweep clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

install: ## Create $(VENV) and install medsweep with the CPU torch wheel and test tools
	python3.11 -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install torch==2.13.0
	$(VENV)/bin/pip install -e ".[dev]"

test: ## Run the test suite (~11 min on 2 cores; slow tests excluded)
	$(PYTHON) -m pytest -q

test-faults: ## Run the tests that guard faults: kill/resume, signals, disk full, node loss, MLflow, a simulated cluster (~12 min on 2 cores)
	$(PYTHON) -m pytest -q -m faults

test-slow: ## Run only the slow tests (real MiniLM sweeps; tens of minutes)
	$(PYTHON) -m pytest -q -m slow

smoke: ## Whole path on a tiny random model in well under a minute
	$(PYTHON) -m medsweep.run +sweep=smoke

sweep: ## The default LoRA sweep on the embedded MiniLM + Medical Abstracts (~21 min on 2 cores)
	$(PYTHON) -m medsweep.run +sweep=lr_lora

clean: ## Remove run outputs and caches (not the venv)
	rm -rf runs outputs .cache .pytest_cache
