"""Gateway-side dynamic batching vs no batching vs direct Triton, measured in the same run.

    python bench/bench_batching.py [--seconds 5] [--concurrency 32] [--max-batch 32] [--delay-us 1000]

Starts the embedded mesh (`meshctl up`: real tritonserver, in-memory store) and deploys an
FP32 model (the fraud example) and a BYTES model (tests/models/text_stats) twice each:
batching off (served as `fraud`, `text-stats`) and on (`fraud-batched`, `text-batched`).
Then drives batch-1 ModelInfer requests at the given concurrency with one lean asyncio gRPC
client (pre-serialized request bytes, as bench_gateway.py) against (a) the node's
tritonserver directly, (b) the gateway without batching, (c) the gateway with batching,
and prints requests/s, p50/p99 latency and the ratios vs direct.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_gateway import drive  # noqa: E402  (after the path set-up above)

from fastpath.codec import encode_bytes  # noqa: E402
from meshproto import inference_pb2 as pb  # noqa: E402
from support.mesh import MODELS, EmbeddedMesh, write_spec  # noqa: E402


def fraud_body(model: str) -> bytes:
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="features", datatype="FP32", shape=[1, 16])
    req.raw_input_contents.append(x.tobytes())
    return req.SerializeToString()


def text_body(model: str) -> bytes:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="text", datatype="BYTES", shape=[1, 3])
    req.raw_input_contents.append(encode_bytes([b"hello", b"gateway", b"batching"]))
    return req.SerializeToString()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="measurement time per point")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=32, help="maxBatchSize of the batched deployments "
                    "(text_stats is capped at its Triton max_batch_size, 16)")
    ap.add_argument("--delay-us", type=int, default=1000, help="maxQueueDelayMicroseconds")
    args = ap.parse_args()
    mesh = EmbeddedMesh(Path(tempfile.mkdtemp(prefix="bench-batching-")))
    mesh.start()
    work = mesh.work
    try:
        fraud_dir = ROOT / "examples" / "fraud" / "model"
        text_dir = MODELS / "text_stats"
        specs = [("fraud", fraud_dir, ""), ("text-stats", text_dir, ""),
                 ("fraud-batched", fraud_dir, f"batching: {{maxBatchSize: {args.max_batch}, "
                                              f"maxQueueDelayMicroseconds: {args.delay_us}}}"),
                 ("text-batched", text_dir, f"batching: {{maxBatchSize: {min(args.max_batch, 16)}, "
                                            f"maxQueueDelayMicroseconds: {args.delay_us}}}")]
        for name, path, extra in specs:
            mesh.apply(write_spec(work / f"{name}.yaml", name, path, extra=extra))
        direct = json.loads(mesh.meshctl("get", "nodes", "--json").stdout)[0]["address"]
        c = args.concurrency
        print(f"batch-1 requests, concurrency {c}, {args.seconds:.0f}s per point, client on the same host; "
              f"gateway batching maxBatchSize {args.max_batch} (text: {min(args.max_batch, 16)}), "
              f"maxQueueDelayMicroseconds {args.delay_us}")
        print(f"direct Triton {direct}  vs  gateway {mesh.grpc_url}\n")
        hdr = f"{'model':<14} {'path':<18} | {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} | {'thru vs direct':>14} {'p50 vs direct':>13}"
        print(hdr)
        print("-" * len(hdr))
        for label, body in (("fraud FP32", fraud_body), ("text BYTES", text_body)):
            plain = "fraud" if label.startswith("fraud") else "text-stats"
            batched = "fraud-batched" if label.startswith("fraud") else "text-batched"
            d = asyncio.run(drive(direct, body(plain), c, args.seconds))
            rows = [("direct Triton", d),
                    ("gateway", asyncio.run(drive(mesh.grpc_url, body(plain), c, args.seconds))),
                    ("gateway+batching", asyncio.run(drive(mesh.grpc_url, body(batched), c, args.seconds)))]
            for path, r in rows:
                print(f"{label:<14} {path:<18} | {r['rps']:>7.0f} {r['p50']:>7.2f} {r['p99']:>7.2f} | "
                      f"{r['rps'] / d['rps']:>14.2f} {r['p50'] / d['p50']:>13.2f}"
                      + (f"  errors: {r['errors']}" if r["errors"] else ""), flush=True)
        with open(work / "metrics.txt", "w") as f:
            import urllib.request
            with urllib.request.urlopen(f"http://127.0.0.1:{mesh.metrics_port}/metrics", timeout=10) as resp:
                text = resp.read().decode()
            f.write(text)
        for line in text.splitlines():
            if line.startswith(("mesh_gateway_batch_size_sum", "mesh_gateway_batch_size_count")):
                print("  " + line)
    finally:
        mesh.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
