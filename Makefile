# The two commands a new user types: `make train` and `make test`. Both set up .venv first.
.PHONY: setup train test test-all lint

setup:
	@bash scripts/setup.sh

train: setup
	.venv/bin/esper train heuristic --task digits --baseline

test: setup
	.venv/bin/python -m pytest -q

test-all: setup
	.venv/bin/python -m pytest -q -m "slow or not slow"

lint: setup
	.venv/bin/ruff check src tests benchmarks
