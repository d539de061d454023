# The two commands a new user types: `make train` and `make test`. Both set up a venv first.
# Another interpreter gets a venv of its own: `make test PYTHON=python3.13` uses .venv-3.13.
.PHONY: setup train test test-all test-vision lint

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

# tests/test_docs.py builds the documentation site with `mkdocs build --strict`; it skips without
# the docs extra, so check that setup installed it rather than let the build go unchecked.
test: setup
	$(VENV)/bin/python -c "import mkdocs, material"
	$(VENV)/bin/python -m pytest -q
	$(VENV)/bin/python -O -m pytest -q -W "$(OPTIMIZED_WARNING)" tests/kasmina tests/leyline tests/tolaria --ignore=tests/tolaria/test_distributed.py

test-all: setup
	$(VENV)/bin/python -m pytest -q -m "slow or not slow"

# The optional vision extra (torchvision's models for esper.graft and examples/grow_resnet.py) in a
# venv of its own: torchvision only imports with the exact torch it was built for.
VISION_VENV := .venv-vision
VISION_TORCH := torch==2.14.1 torchvision==0.29.1
VISION_TESTS := tests/kasmina/test_graft_vision.py tests/examples

test-vision:
	@VENV=$(VISION_VENV) TORCH_SPEC="$(VISION_TORCH)" EXTRAS=dev,vision,graft-widen bash scripts/setup.sh
	$(VISION_VENV)/bin/python -c "import torchvision"  # fails loudly rather than skipping every test
	$(VISION_VENV)/bin/python -m pytest -q $(VISION_TESTS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
