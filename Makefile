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

# The suite in two passes: the tests that may share the machine on TEST_WORKERS workers (a file's tests stay
# together: they share module fixtures), then those marked `alone` one at a time. About half of a one-worker
# run's time is spent waiting on servers and subprocesses with a core idle. In the first pass each worker,
# and every process it starts, gets its share of the cores as OpenMP threads: two-thread trainings side by
# side on two cores wait at every barrier for a thread the other holds (a 20 s test took 200 s).
TEST_WORKERS ?= $(shell nproc)
TEST_THREADS = $(shell echo $$(( $$(nproc) / $(TEST_WORKERS) > 1 ? $$(nproc) / $(TEST_WORKERS) : 1 )))

# both end with the fault-injection summary (bench/chaos_report.py) of the figures this run recorded
test: $(BIN)/.installed
	rm -rf build/chaos
	OMP_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile -m "not alone" tests; shared=$$?; \
	$(BIN)/python -m pytest -q --durations=10 -m alone tests; alone=$$?; \
	$(BIN)/python bench/chaos_report.py; [ $$shared -eq 0 ] && [ $$alone -eq 0 ]

CHAOS_TESTS = tests/chaos $(wildcard tests/engine/test_faults_engine.py tests/security)

chaos: $(BIN)/.installed
	rm -rf build/chaos
	$(BIN)/python -m pytest -q $(CHAOS_TESTS); status=$$?; $(BIN)/python bench/chaos_report.py || status=1; exit $$status
