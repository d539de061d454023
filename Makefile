# The two commands a new user types: `make train` and `make test`. Both set up a venv first.
# Another interpreter gets a venv of its own: `make test PYTHON=python3.13` uses .venv-3.13.
.PHONY: setup train test test-all lint

PYTHON ?= python3
ifeq ($(PYTHON),python3)
VENV ?= .venv
else
VENV ?= .venv-$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
endif
export PYTHON VENV

# Under python -O asserts in Esper's code vanish, while pytest's rewritten asserts in the tests
# still fire; pytest warns about the former, which is the point of this run.
OPTIMIZED_WARNING := ignore:assertions not in test modules:pytest.PytestConfigWarning

setup:
	@bash scripts/setup.sh

train: setup
	$(VENV)/bin/esper train heuristic --task digits --baseline

test: setup
	$(VENV)/bin/python -m pytest -q
	$(VENV)/bin/python -O -m pytest -q -W "$(OPTIMIZED_WARNING)" tests/kasmina tests/leyline tests/tolaria --ignore=tests/tolaria/test_distributed.py

test-all: setup
	$(VENV)/bin/python -m pytest -q -m "slow or not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
