#!/usr/bin/env bash
# Create .venv inside the checkout and install sparsepipe (+ test extras) into it.
# Idempotent: re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "sparsepipe needs Python >= 3.11 (found $("$PY" --version 2>&1)); set PYTHON=..." >&2; exit 2; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.sparsepipe-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "sparsepipe: installing into .venv (torch + torchvision standard build, ~5 GB; 2 minutes on this project's 2-core machine)..." >&2
  log=.venv/install.log
  free_gb=$(df -Pk .venv | awk 'NR==2 {print int($4 / 1048576)}')
  [ "$free_gb" -ge 8 ] || echo "sparsepipe: warning: $free_gb GB free on the disk of $(pwd)/.venv; the install needs about 7 GB (torch's CUDA libraries come with the standard build)" >&2
  { .venv/bin/python -m pip install --disable-pip-version-check --no-cache-dir --upgrade pip \
      && .venv/bin/python -m pip install --disable-pip-version-check --no-cache-dir -e ".[test]"; } >"$log" 2>&1 \
    || { tail -n 40 "$log" >&2; echo "sparsepipe: install failed; full log in $log" >&2; exit 1; }
  .venv/bin/python -c 'import torch, torchvision, onnx, onnxruntime' \
    || { echo "sparsepipe: installed packages do not import (see above)" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
