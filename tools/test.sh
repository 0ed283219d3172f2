#!/usr/bin/env bash
# The test suite (installs what it needs first). Extra arguments go to pytest, e.g. -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh
# one worker per core (at most 4), a test file per worker at a time (its module fixtures built once);
# pass -n 0 to run in this process
workers=$(nproc 2>/dev/null || echo 2)
[ "$workers" -le 4 ] || workers=4
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
