#!/usr/bin/env bash
# Set up a fresh machine: system parts for the simulator, then a virtual environment `.venv`
# with vla-compress and all its extras. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = "0" ] || command -v sudo >/dev/null 2>&1; then
  bash scripts/install_system_deps.sh
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch and torchvision are pinned as a pair in pyproject.toml (see docs/install.md).
.venv/bin/python -m pip install --quiet -e ".[sim,libero,quant,rl,dev]"
.venv/bin/python - <<'PY'
import torch, torchvision, timm, numpy
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, numpy {numpy.__version__}")
PY
