#!/usr/bin/env bash
# The main job on one machine: install, start the embedded mesh (`meshctl up`:
# scheduler + node agent with a real tritonserver + gateway, in-memory store),
# deploy the fraud example, query it with the unmodified Triton client, and keep
# serving until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
log=$(mktemp -t meshctl-up.XXXXXX.log)
meshctl up "$@" >"$log" 2>&1 &
mesh=$!
trap 'kill -TERM $mesh 2>/dev/null; wait $mesh 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 300); do
  grep -q "mesh is up" "$log" && break
  kill -0 $mesh 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.2
done
grep -A6 "mesh is up" "$log"
meshctl apply -f examples/fraud/isvc.yaml --wait
meshctl get models
meshctl get nodes
python examples/fraud/client.py
cat <<TXT

The fraud model is served on the standard Triton ports. Try:
  python examples/fraud/client.py            # gRPC, tritonclient
  python examples/fraud/client.py --http     # HTTP/REST
  curl -s localhost:8000/v2/models/fraud
  curl -s localhost:8002/metrics | grep mesh_gateway
(with .venv/bin on PATH). Logs: $log. Ctrl-C stops the mesh.
TXT
wait $mesh
