#!/usr/bin/env bash
# Installs PyTorch (CPU build) for python3 if it cannot be imported: the job tests and the
# examples run real torch.distributed (gloo) programs. Uses a local wheel folder when pip is
# configured with one (PIP_FIND_LINKS), else the PyTorch CPU index, else PyPI.
set -euo pipefail
if python3 -c 'import torch' >/dev/null 2>&1; then exit 0; fi
echo "installing torch (CPU) for $(command -v python3)…" >&2
# A distribution's own Python refuses pip installs (PEP 668); older pips ignore the variable.
export PIP_BREAK_SYSTEM_PACKAGES=1
python3 -m pip install -q 'torch==2.13.0+cpu' 2>/dev/null \
  || python3 -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu \
  || python3 -m pip install -q torch
python3 -c 'import torch; print("torch", torch.__version__)' >&2
