# Two entry points (see README): `make demo` runs the main job, `make test` the suite.
# Each creates .venv and installs the project on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/tinyforge demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests
