#!/usr/bin/env bash
# Create a virtual environment and install Esper with its dev tools. Idempotent: a second run is quick.
# PYTHON is the interpreter (default python3), VENV the environment's folder (default .venv; the
# Makefile gives another interpreter its own, e.g. .venv-3.13).
# TORCH_SPEC picks the PyTorch build; the default pins 2.13.0: for Python 3.11 this kind of machine
# carries the CPU wheel on local disk (a bare range would pull a ~5 GB CUDA build); for another
# Python pip takes the registry's build of the same version, a CUDA build that runs on CPU.
# EXTRAS are the optional dependency groups installed with Esper (default dev,docs,graft-widen: the test tools
# and mkdocs, with which the tests build the documentation site, and torch-pruning for esper.graft(widen=...)); `make test-vision` uses
# VENV=.venv-vision, TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" (a matching pair: torchvision
# only imports with the torch it was built for) and EXTRAS=dev,vision,graft-widen.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-dev,docs,graft-widen}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp=$VENV/.esper-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Esper into $VENV ($("$VENV/bin/python" --version))"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # shellcheck disable=SC2086 # TORCH_SPEC may name several packages
  "$VENV/bin/python" -m pip install --quiet $TORCH_SPEC
  "$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
  touch "$stamp"
fi
