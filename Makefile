# Entry points; bin/setup does the work of `setup` and is a fast check once installed.
.PHONY: setup bank test test-fast demo clean distclean

VENV := .venv
PY := $(VENV)/bin/python
# pytest-xdist workers (`make test JOBS=1` runs in one process). --dist loadfile keeps each test file in one
# worker, so a module's fixtures are built once; tests/conftest.py shares the session's data between workers.
JOBS ?= 2
PYTEST := $(PY) -m pytest -n $(JOBS) --dist loadfile

setup:
	bin/setup

# The tests read the source bank (data/bank, or $MAMCLAP_DATA/bank): built once here (a few minutes), and
# checked in a second later.
bank: setup
	test -f "$${MAMCLAP_DATA:-data}/bank/index.jsonl" || $(VENV)/bin/mamclap data bank

# Every test, slow ones included. pytest exits 5 when it collects nothing, and that fails here too:
# a CI run that tested nothing is not a pass.
# MAMCLAP_STRICT_SKIPS turns any skipped test into a failure: in `make test` nothing may be missing.
test: bank
	MAMCLAP_STRICT_SKIPS=1 $(PYTEST) tests/

# Day-to-day: every test but those marked slow (end-to-end runs of about 20 s or more); about 5 minutes on
# 2 idle cores once set up and the bank is built (~460 CPU-seconds).
test-fast: bank
	MAMCLAP_STRICT_SKIPS=1 $(PYTEST) -m "not slow" tests/

# The whole pipeline on the tiny kit (smoke scale; README.md gives its time); re-running skips finished stages.
demo: setup
	$(VENV)/bin/mamclap demo

# Build and test debris; keeps .venv, cache/, data/ and runs/.
clean:
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf .pytest_cache build dist *.egg-info

# Also the virtual environment and downloads (the next `make setup` reinstalls everything).
distclean: clean
	rm -rf $(VENV) cache
