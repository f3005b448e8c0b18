"""Gateway vs direct Triton, measured in the same run on the same model.

    python bench/bench_gateway.py [--seconds 5] [--concurrency 1 8 32]

Starts the embedded mesh (`meshctl up`: real tritonserver, in-memory store),
deploys the fraud example, then drives batch-1 ModelInfer requests at each
concurrency against (a) the node's tritonserver directly and (b) the gateway,
with one lean asyncio gRPC client sending pre-serialized request bytes, and
prints requests/s, p50/p99 latency and the gateway/direct ratios.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from meshproto import inference_pb2 as pb  # noqa: E402
from support.mesh import EmbeddedMesh  # noqa: E402  (after the path set-up above)

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def request_bytes(model: str) -> bytes:
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="features", datatype="FP32", shape=[1, 16])
    req.raw_input_contents.append(x.tobytes())
    return req.SerializeToString()


async def drive(address: str, body: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address) as ch:
        call = ch.unary_unary(METHOD)
        for _ in range(20):  # warm the connection and the model
            await call(body, timeout=30)
        latencies: list[float] = []
        errors = 0
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    await call(body, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                latencies.append(time.perf_counter() - t0)

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t_start
    lat = np.array(latencies) * 1000
    return {"rps": len(latencies) / elapsed, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "errors": errors}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="measurement time per point")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = ap.parse_args()
    mesh = EmbeddedMesh(Path(tempfile.mkdtemp(prefix="bench-gateway-")))
    mesh.start()
    try:
        mesh.apply(ROOT / "examples" / "fraud" / "isvc.yaml")
        nodes = json.loads(mesh.meshctl("get", "nodes", "--json").stdout)
        direct = nodes[0]["address"]
        body = request_bytes("fraud")
        print(f"fraud MLP, batch-1 FP32[1,16] requests, {args.seconds:.0f}s per point, client on the same host")
        print(f"direct Triton {direct}  vs  gateway {mesh.grpc_url}\n")
        hdr = f"{'conc':>4} | {'direct req/s':>12} {'p50 ms':>7} {'p99 ms':>7} | {'gateway req/s':>13} {'p50 ms':>7} " \
              f"{'p99 ms':>7} | {'thru ratio':>10} {'p50 ratio':>9}"
        print(hdr)
        print("-" * len(hdr))
        for c in args.concurrency:
            d = asyncio.run(drive(direct, body, c, args.seconds))
            g = asyncio.run(drive(mesh.grpc_url, body, c, args.seconds))
            print(f"{c:>4} | {d['rps']:>12.0f} {d['p50']:>7.2f} {d['p99']:>7.2f} | {g['rps']:>13.0f} {g['p50']:>7.2f} "
                  f"{g['p99']:>7.2f} | {g['rps'] / d['rps']:>10.2f} {g['p50'] / d['p50']:>9.2f}"
                  + (f"  errors: direct {d['errors']}, gateway {g['errors']}" if d["errors"] or g["errors"] else ""),
                  flush=True)
    finally:
        mesh.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
