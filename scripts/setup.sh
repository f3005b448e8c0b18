#!/usr/bin/env bash
# Create .venv and install the project (Cython fastpath + generated gRPC stubs are
# built by `pip install`). Idempotent; prints the venv path on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv >&2
fi
stamp=.venv/.mesh-installed
want=$(cat pyproject.toml setup.py protos/meshproto/*.proto fastpath/*.pyx fastpath/*.pxd | sha1sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -d meshproto ]; then
  echo "installing the project into .venv ..." >&2
  .venv/bin/python -m pip install -q -e '.[test]' >&2
  echo "$want" > "$stamp"
fi
echo "$PWD/.venv"
