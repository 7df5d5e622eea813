# Two entry points (see README): `make demo` runs the main job, `make test` the suite.
# Each creates .venv and installs the project on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench chaos

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/tinyforge demo

# both end with the fault-injection summary (bench/chaos_report.py) of the figures this run recorded
test: $(BIN)/.installed
	rm -rf build/chaos
	$(BIN)/python -m pytest -q --durations=25 tests; status=$$?; $(BIN)/python bench/chaos_report.py; exit $$status

CHAOS_TESTS = tests/chaos $(wildcard tests/engine/test_faults_engine.py tests/security)

chaos: $(BIN)/.installed
	rm -rf build/chaos
	$(BIN)/python -m pytest -q $(CHAOS_TESTS); status=$$?; $(BIN)/python bench/chaos_report.py || status=1; exit $$status
