#!/usr/bin/env bash
# The CUDA tests (pytest marker `gpu`, tests/gpu), on a machine with a GPU. They are skipped
# everywhere else, CI included (no GPU there). Uses the vision venv (torch 2.14.1 with CUDA, and
# torchvision for the resnet example), made as `make test-vision` makes it; VENV picks another.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-vision}
if [ "$VENV" = .venv-vision ]; then
  VENV=.venv-vision TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" EXTRAS=dev,vision bash scripts/setup.sh
fi
"$VENV/bin/python" - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (cuda {torch.version.cuda})")
print(f"gpu_check: torch {torch.__version__}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
PY
"$VENV/bin/python" -m pytest -q -m gpu -rs tests/gpu "$@"
