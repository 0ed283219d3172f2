#!/usr/bin/env bash
# The main job: the whole pipeline on the bundled digits data (installs what it needs first).
# Extra arguments go to `sparsepipe run`, e.g. tools/quickstart.sh --force
set -euo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh
exec .venv/bin/sparsepipe run configs/quickstart.toml "$@"
