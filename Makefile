# Set-up and everyday commands. Each target creates .venv on first use and installs what it needs.
# torch is pinned to the CPU wheel first, so nothing pulls CUDA packages on a CPU machine;
# on a GPU machine install your CUDA build of torch into .venv first (see README).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: demo test lint setup setup-test clean demo-models

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -e ".[test]"
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

## demo: generate a synthetic kidney case and run detection on it (prints lesions, Dice, F1)
demo: setup
	$(BIN)/diffusion-anomaly demo --organ kidney --out demo-output

## test: the whole test suite (what CI runs) plus the linter
test: setup-test
	@$(BIN)/python -m pytest -q Testing/Python; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken" >&2; fi; exit $$rc
	$(BIN)/ruff check DiffusionAnomalyLib DiffusionAnomaly Testing

## demo-models: train the demo bundles on synthetic phantoms into Resources/Models (restartable; ~2 h for the kidney, ~80-130 min each for liver and brain, on 2 CPU cores)
demo-models: setup
	$(BIN)/python scripts/train_demo_models.py

lint: setup-test
	$(BIN)/ruff check DiffusionAnomalyLib DiffusionAnomaly Testing

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
