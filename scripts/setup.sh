#!/usr/bin/env bash
# Create .venv and install Esper with its dev tools. Idempotent: a second run is quick.
# TORCH_SPEC picks the PyTorch build; the default pins the CPU wheel this kind of
# machine carries on local disk (a bare range would pull a ~5 GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.esper-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "$TORCH_SPEC"
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  touch "$stamp"
fi
