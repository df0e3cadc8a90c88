# The two commands a new user runs on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs qchan into it first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml setup.py qchan/protocol/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/cluster/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check qchan tests benchmarks examples
	$(VENV)/bin/ruff format --check qchan tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy qchan tests

unit: $(STAMP)
	$(PY) -m pytest

test: lint typecheck unit

bench: $(STAMP)
	$(PY) benchmarks/local.py

clean:
	rm -rf $(VENV) build *.egg-info qchan/protocol/*.so .mypy_cache .ruff_cache .hypothesis
