"""Benchmark the compiled fastpath against tritonclient, numpy and its own Python twins.

    python bench/bench_fastpath.py [--seconds 0.5]

Every ratio compares two measurements taken in this same run (fastpath / baseline, higher is
better). Each measurement runs for about ``--seconds`` and reports the best of several timed
batches, so a noisy shared machine skews it less.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np

from fastpath import batch, codec, wire
from fastpath import reference as ref

try:
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor
except ImportError:  # the BYTES-vs-tritonclient rows are then skipped
    serialize_byte_tensor = deserialize_bytes_tensor = service_pb2 = None


def measure(fn: Callable[[], Any], seconds: float) -> float:
    """Seconds per call: best batch of a time-bounded run."""
    fn()
    n, t = 1, 0.0
    while True:  # calibrate a batch of ~10 ms
        start = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - start
        if t >= 0.01 or n >= 1 << 20:
            break
        n *= 2
    best = t / n
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def fmt_rate(per_call: float, nbytes: int | None) -> str:
    if nbytes:
        return f"{nbytes / per_call / 1e6:10.0f} MB/s"
    return f"{1 / per_call:10.0f} op/s"


class Table:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.rows: list[tuple[str, str, str, str, float, float | None]] = []
        print(f"{'case':44} {'fastpath':>15} {'baseline':>15}  {'ratio':>7}  target  (baseline)")

    def row(self, case: str, fast: Callable[[], Any], base: Callable[[], Any], base_name: str,
            nbytes: int | None = None, target: float | None = None) -> None:
        tf = measure(fast, self.seconds)
        tb = measure(base, self.seconds)
        ratio = tb / tf
        mark = "" if target is None else (f">={target:g}x" + (" ok" if ratio >= target else " MISS"))
        print(f"{case:44} {fmt_rate(tf, nbytes):>15} {fmt_rate(tb, nbytes):>15}  {ratio:6.1f}x  "
              f"{mark:9} ({base_name})", flush=True)


def bench_bytes(table: Table, rng: np.random.Generator, n: int) -> None:
    """BYTES encode/decode vs tritonclient and the Python twin."""
    items = [rng.bytes(int(k)) for k in rng.integers(0, 32, n)]
    arr = np.empty(n, dtype=object)
    arr[:] = items
    raw = codec.encode_bytes(arr)
    if serialize_byte_tensor is not None:
        assert raw == serialize_byte_tensor(arr).item()
        table.row(f"BYTES encode {n} elems", lambda: codec.encode_bytes(arr),
                  lambda: serialize_byte_tensor(arr), "tritonclient", target=10)
        table.row(f"BYTES decode {n} elems", lambda: codec.decode_bytes(raw, n),
                  lambda: deserialize_bytes_tensor(raw), "tritonclient", target=10)
    table.row(f"BYTES encode {n} elems", lambda: codec.encode_bytes(arr),
              lambda: ref.encode_bytes(arr), "reference twin")
    table.row(f"BYTES decode {n} elems", lambda: codec.decode_bytes(raw, n),
              lambda: ref.decode_bytes(raw, n), "reference twin")


def bench_batching(table: Table, rng: np.random.Generator, requests: int, width: int) -> None:
    """merge_raw / split_raw of FP32 [1, width] requests vs a numpy copy of the same bytes."""
    parts = [rng.random((1, width), dtype=np.float32).tobytes() for _ in range(requests)]
    total = requests * width * 4
    flat = np.frombuffer(b"".join(parts), dtype=np.uint8)
    merged = batch.merge_raw(parts)
    label = f"{requests} req x 1x{width} FP32 ({total >> 10} KiB)"
    table.row(f"merge_raw {label}", lambda: batch.merge_raw(parts), lambda: flat.copy(),
              "numpy copy", nbytes=total, target=0.5)
    table.row(f"split_raw {label}", lambda: batch.split_raw(merged, "FP32", [1] * requests, [width]),
              lambda: flat.copy(), "numpy copy", nbytes=total, target=0.5)


def bench_tensor(table: Table, rng: np.random.Generator, shape: tuple[int, int]) -> None:
    """Fixed-size decode/encode vs the Python twin."""
    arr = rng.random(shape, dtype=np.float32)
    raw = arr.tobytes()
    label = "x".join(map(str, shape))
    table.row(f"decode_tensor FP32 {label}", lambda: codec.decode_tensor(raw, "FP32", shape, "x"),
              lambda: ref.decode_tensor(raw, "FP32", shape, "x"), "reference twin")
    table.row(f"encode_tensor FP32 {label}", lambda: codec.encode_tensor(arr, "FP32"),
              lambda: ref.encode_tensor(arr, "FP32"), "reference twin")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"# fastpath DEBUG build: {codec.DEBUG}; {args.seconds:g} s per measurement, best batch")
    table = Table(args.seconds)

    for n in (1_000, 100_000):
        bench_bytes(table, rng, n)
    strs = np.array([f"token-{i}-é" for i in range(10_000)])
    table.row("BYTES encode 10000 str_ (UTF-8)", lambda: codec.encode_bytes(strs),
              lambda: ref.encode_bytes(strs), "reference twin")
    for requests, width in ((32, 256), (32, 16_384), (8, 262_144)):
        bench_batching(table, rng, requests, width)
    items = [rng.bytes(int(k)) for k in rng.integers(0, 32, 64)]
    parts = [codec.encode_bytes(items) for _ in range(32)]
    merged = batch.merge_raw(parts)
    table.row("split_raw BYTES 32 req x 64 elems",
              lambda: batch.split_raw(merged, "BYTES", [64] * 32, []),
              lambda: ref.split_raw(merged, "BYTES", [64] * 32, []), "reference twin")
    for shape in ((1, 256), (64, 1024)):
        bench_tensor(table, rng, shape)
    data = rng.random(1024).tolist()
    table.row("json_to_raw FP32 1024", lambda: codec.json_to_raw(data, "FP32", [1024]),
              lambda: ref.json_to_raw(data, "FP32", [1024]), "reference twin")

    # wire: route by model name
    if service_pb2 is not None:
        req = service_pb2.ModelInferRequest(model_name="resnet50", model_version="3", id="req-1")
        tensor = req.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224])
        req.raw_input_contents.append(rng.random((1, 3, 224, 224), dtype=np.float32).tobytes())
        del tensor
        buf = req.SerializeToString()

        def parse() -> Any:
            msg = service_pb2.ModelInferRequest()
            msg.ParseFromString(buf)
            return msg.model_name, msg.model_version

        table.row("scan_model 600 KiB request", lambda: wire.scan_model(buf), parse,
                  "protobuf parse")
        table.row("scan_model 600 KiB request", lambda: wire.scan_model(buf),
                  lambda: ref.scan_model(buf), "reference twin")


if __name__ == "__main__":
    main()
