#!/usr/bin/env bash
# The whole test suite on a fresh machine: install, build Consul, lint, test.
# Extra arguments go to pytest (e.g. scripts/test.sh -k placement).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
start=$(date +%s)
consul=$(bash scripts/build_consul.sh)
echo "consul: $consul ($(( $(date +%s) - start ))s)" >&2
.venv/bin/ruff check .
export MESH_FUZZ_SECONDS=${MESH_FUZZ_SECONDS:-60}
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
