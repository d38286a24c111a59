# Set-up and everyday commands. Each target creates .venv on first use and installs what it needs.
# torch is pinned to the CPU wheel first, so nothing pulls CUDA packages on a CPU machine;
# on a GPU machine install your CUDA build of torch into .venv first (see README).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: demo test test-slicer lint setup setup-test clean demo-models schema

# The Slicer side runs as Slicer 5.10+ runs it: Python 3.12 with only numpy, scipy, SimpleITK
# (+ slicer-core, PyQt5, pytest for the Slicer-like runtime). `python3.12` may be a broken pyenv shim.
SLICER_VENV ?= .venv-slicer
SLICER_BIN   = $(SLICER_VENV)/bin
PYTHON312   ?= $(firstword $(foreach p,python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12.*/bin/python3.12),\
                 $(shell $(p) -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && echo $(p))))

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install $(TORCH) "setuptools>=77"  # setuptools: test_packaging builds the wheel offline with it
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -e ".[test]"
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

$(SLICER_BIN)/python:
	@test -n "$(PYTHON312)" || { echo "test-slicer needs Python 3.12 (python3.12 or ~/.pyenv/versions/3.12.*)" >&2; exit 1; }
	$(PYTHON312) -m venv $(SLICER_VENV)
	$(SLICER_BIN)/python -m pip install --upgrade pip >/dev/null

$(SLICER_VENV)/.installed: $(SLICER_BIN)/python Testing/Slicer/requirements.txt
	$(SLICER_BIN)/pip install -r Testing/Slicer/requirements.txt
	touch $@

## demo: generate a synthetic kidney case and run detection on it (prints lesions, Dice, F1)
demo: setup
	$(BIN)/diffusion-anomaly demo --organ kidney --out demo-output

## test: the whole test suite (what CI runs) plus the linter; the library's tests in TEST_WORKERS processes
## (pytest-xdist, one test file per process at a time), each with one OpenMP thread unless OMP_NUM_THREADS is set
## (two workers with PyTorch's default of a thread per core oversubscribe the cores: 708 s against 513 s on 2 cores),
## the Slicer side's two layers side by side; pytest lists the 15 slowest tests (the suite is meant to stay under 15
## minutes on 2 cores)
TEST_WORKERS ?= 2
test: setup-test
	@OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} \
	  $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 Testing/Python; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken" >&2; fi; exit $$rc
	@$(MAKE) --no-print-directory test-slicer
	$(BIN)/ruff check DiffusionAnomalyLib DiffusionAnomaly Testing

## test-slicer: the module's Slicer side on the Slicer-like runtime (Testing/SlicerRuntime), in .venv-slicer, once per
## Slicer Python layer (SLICER_LAYERS, DA_SLICER_LAYER: 5.12.3 and 5.10.0, the oldest supported);
## DA_WORKER_PYTHON is the full environment's Python, for tests that run the real worker
SLICER_LAYERS ?= 5.12.3 5.10.0
## The layers run side by side, each with one OpenMP thread (it and its workers: OMP_NUM_THREADS, unless set), so
## that two runs' PyTorch threads do not oversubscribe the cores; each one's output is printed when all have ended.
test-slicer: $(SLICER_VENV)/.installed $(VENV)/.installed
	@logs=$$(mktemp -d); for layer in $(SLICER_LAYERS); do \
	  ( OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} \
	    DA_SLICER_LAYER=$$layer DA_WORKER_PYTHON=$(abspath $(BIN)/python) QT_QPA_PLATFORM=offscreen \
	    $(SLICER_BIN)/python -m pytest -q -p no:cacheprovider Testing/Slicer >"$$logs/$$layer.log" 2>&1; \
	    echo $$? >"$$logs/$$layer.rc" ) & \
	done; wait; rc=0; for layer in $(SLICER_LAYERS); do \
	  echo "== the Slicer side on Slicer $$layer's Python layer"; cat "$$logs/$$layer.log"; r=$$(cat "$$logs/$$layer.rc"); \
	  if [ "$$r" = 5 ]; then echo "pytest collected no tests: the Slicer suite is broken" >&2; fi; \
	  if [ "$$r" != 0 ]; then rc=$$r; fi; \
	done; rm -rf "$$logs"; exit $$rc

## demo-models: the demo bundles, each made by `diffusion-anomaly train all` on phantoms, installed into Resources/Models (restartable; hours per organ on 2 CPU cores; ORGANS=kidney, SMOKE=1: see scripts/demo_models.sh)
demo-models: setup
	PYTHON=$(abspath $(BIN)/python) bash scripts/demo_models.sh

## schema: rewrite the generated `recommended` block of models/model.schema.json from settings.RunSettings
schema: setup
	$(BIN)/python -c "import json, pathlib; from DiffusionAnomalyLib.settings import recommended_schema; \
	p = pathlib.Path('DiffusionAnomalyLib/models/model.schema.json'); d = json.loads(p.read_text()); \
	d['properties']['recommended'] = recommended_schema(); p.write_text(json.dumps(d, indent=2) + '\n')"

lint: setup-test
	$(BIN)/ruff check DiffusionAnomalyLib DiffusionAnomaly Testing

clean:
	rm -rf $(VENV) $(SLICER_VENV) demo-output .pytest_cache .ruff_cache
