# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   -> creates/reuses .venv, installs, trains the CPU demo on phantom data
#   make test   -> creates/reuses .venv, installs, lints (ruff) and runs the test suite
# The CPU install pins torch==2.13.0 *before* anything else so no CUDA build is pulled.
# GPU users: make TORCH_SPEC="torch==2.13.0" TORCH_INDEX="https://download.pytorch.org/whl/cu128" demo
PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo train test test-fast lint format benchmark clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m monai.bundle run training \
	    --config_file "['bundle/configs/train.json','bundle/configs/demo.json']"

train: $(STAMP)
	$(PY) -m monai.bundle run training --config_file bundle/configs/train.json

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: lint
	$(PY) -m pytest

test-fast: lint
	$(PY) -m pytest -m "not slow"

benchmark: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
