#!/usr/bin/env bash
# The test suite (installs what it needs first). Extra arguments go to pytest, e.g. -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
