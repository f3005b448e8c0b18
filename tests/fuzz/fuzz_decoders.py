"""Fuzz the fastpath decoders: only CodecError / WireError may escape, and the compiled
modules must agree with their pure-Python twins in fastpath.reference.

Targets: codec.decode_tensor (every datatype, BYTES included), codec.decode_bytes,
codec.raw_to_json, batch.split_raw, wire.scan_model / scan_fields.

    python tests/fuzz/fuzz_decoders.py -max_total_time=60      # libFuzzer flags

Uses atheris (coverage-guided; only the Python side is instrumented, the Cython modules are
exercised as black boxes) when it is installed, else a built-in random-mutation driver that
understands ``-max_total_time=N``, ``-runs=N`` and ``-seed=N``. ``MESH_FUZZ_ENGINE=random``
forces the built-in driver. Exit status 0 means no finding.
"""
from __future__ import annotations

import os
import random
import struct
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from fastpath import batch, codec, wire
from fastpath.errors import CodecError, WireError

DATATYPES = sorted(codec.DATATYPE_SIZES) + ["BYTES"]
EXPECTED = (CodecError, WireError)
ref: Any = None  # fastpath.reference, imported by _load_reference (instrumented under atheris)


def _load_reference(instrument: Callable[..., Any] | None = None) -> None:
    global ref
    if instrument is None:
        import fastpath.reference as module
    else:
        with instrument(include=["fastpath.reference"]):
            import fastpath.reference as module
    ref = module


def _call(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except EXPECTED as exc:
        return type(exc).__name__, str(exc)


def _same(a: tuple[str, Any], b: tuple[str, Any], what: str) -> None:
    def norm(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return (v.dtype.str, v.shape, v.tolist() if v.dtype == object else v.tobytes())
        if isinstance(v, list) and v and isinstance(v[0], memoryview):
            return [bytes(m) for m in v]
        return repr(v)

    if a[0] != b[0] or norm(a[1]) != norm(b[1]):
        raise AssertionError(f"{what}: compiled {a!r} != reference {b!r}")


def _shape(raw: bytes) -> list[int]:
    # dims 0..4, with an occasional negative or huge one
    dims = []
    for byte in raw:
        if byte == 0xFF:
            dims.append(-1)
        elif byte == 0xFE:
            dims.append(2**41)
        else:
            dims.append(byte % 5)
    return dims


def _bytes_payload(body: bytes, corrupt: int) -> bytes:
    # A mostly valid BYTES encoding built from the input, then one byte corrupted.
    chunks = [body[i:i + 1 + (body[i] % 7)] for i in range(0, len(body), 8)]
    raw = bytearray(codec.encode_bytes(chunks))
    if raw and corrupt % 3 == 0:
        raw[corrupt % len(raw)] ^= 0xFF
    elif corrupt % 3 == 1:
        del raw[len(raw) - corrupt % (len(raw) + 1):]
    return bytes(raw)


def test_one_input(data: bytes) -> None:
    if len(data) < 4:
        return
    op, sel, nd, corrupt = data[0] % 7, data[1], data[2] % 5, data[3]
    dims = _shape(data[4:4 + nd])
    body = data[4 + nd:]
    name = "fz"
    datatype = DATATYPES[sel % len(DATATYPES)]
    if op == 0:  # decode_tensor on arbitrary bytes
        a = _call(codec.decode_tensor, body, datatype, dims, name)
        _same(a, _call(ref.decode_tensor, body, datatype, dims, name), "decode_tensor")
        if a[0] == "ok" and datatype != "BYTES":
            assert a[1].nbytes == len(body) and not a[1].flags.writeable
    elif op == 1:  # decode_tensor on a near-valid BYTES payload
        raw = _bytes_payload(body, corrupt)
        count = len(codec.decode_bytes(raw, -1)) if _call(codec.decode_bytes, raw, -1)[0] == "ok" else 1
        shape = [count] if sel % 2 else dims
        _same(_call(codec.decode_tensor, raw, "BYTES", shape, name),
              _call(ref.decode_tensor, raw, "BYTES", shape, name), "decode_tensor BYTES")
    elif op == 2:  # decode_bytes with a count
        count = (sel % 10) - 2
        _same(_call(codec.decode_bytes, body, count, name), _call(ref.decode_bytes, body, count, name),
              "decode_bytes")
    elif op == 3:  # split_raw
        sizes = [b % 4 for b in body[:sel % 5]] + ([-1] if corrupt == 0xFF else [])
        buf = _bytes_payload(body, corrupt) if datatype == "BYTES" and sel & 0x80 else body
        _same(_call(batch.split_raw, buf, datatype, sizes, dims[:2], name),
              _call(ref.split_raw, buf, datatype, sizes, dims[:2], name), "split_raw")
    elif op == 4:  # raw_to_json
        _same(_call(codec.raw_to_json, body, datatype, dims, name),
              _call(ref.raw_to_json, body, datatype, dims, name), "raw_to_json")
    elif op == 5:  # scan_model on arbitrary bytes
        _same(_call(wire.scan_model, body), _call(ref.scan_model, body), "scan_model")
        _same(_call(wire.scan_fields, body), _call(ref.scan_fields, body), "scan_fields")
    else:  # scan_model on a near-valid message: name, version, raw contents, then noise
        name_b, ver_b = body[: sel % 16], body[sel % 16: sel % 16 + 3]
        msg = (b"\x0a" + bytes([len(name_b)]) + name_b + b"\x12" + bytes([len(ver_b)]) + ver_b
               + b"\x3a" + bytes([min(len(body), 127)]) + body[:127] + body[127:])
        _same(_call(wire.scan_model, msg), _call(ref.scan_model, msg), "scan_model near-valid")


# ----------------------------------------------------------------------------- drivers

def _seeds() -> list[bytes]:
    seeds = [bytes([op, sel, 2, 1, 2, 3]) + b"\x00" * 24 for op in range(7) for sel in (3, 13, 0x8d)]
    seeds.append(bytes([1, 1, 1, 5, 3]) + codec.encode_bytes([b"abc", b"", b"hello"]))
    seeds.append(bytes([5, 0, 0, 0]) + b"\x0a\x06resnet\x12\x013\x3a\x04\x00\x00\x80\x3f")
    seeds.append(bytes([2, 4, 0, 0]) + struct.pack("<I", 3) + b"abc")
    return seeds


def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if choice == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1 and buf:
            buf[min(pos, len(buf) - 1)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif choice == 2:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif choice == 3:
            del buf[pos:pos + rng.randint(1, 8)]
        elif choice == 4:
            del buf[pos:]
        elif choice == 5:
            other = rng.choice(pool)
            buf[pos:pos] = other[rng.randrange(len(other) + 1):]
        else:
            buf[pos:pos] = struct.pack("<I", rng.choice((0, 1, 4, 255, 2**31, 2**32 - 1)))
    return bytes(buf)


def _random_driver(argv: list[str]) -> int:
    opts = dict(a.lstrip("-").split("=", 1) for a in argv if a.startswith("-") and "=" in a)
    deadline = time.monotonic() + float(opts.get("max_total_time", 10))
    runs = int(opts.get("runs", -1))
    rng = random.Random(int(opts.get("seed", 0)) or None)
    pool = _seeds()
    n = 0
    while time.monotonic() < deadline and (runs < 0 or n < runs):
        base = rng.choice(pool)
        data = _mutate(rng, base, pool) if rng.random() < 0.9 else rng.randbytes(rng.randint(0, 64))
        try:
            test_one_input(data)
        except Exception:  # noqa: BLE001  (any exception escaping the target is a finding)
            traceback.print_exc()
            crash = Path(f"crash-{int(time.time())}")
            crash.write_bytes(data)
            print(f"finding after {n} runs; input saved to {crash}", file=sys.stderr)
            return 1
        if len(pool) < 512 and rng.random() < 0.02:
            pool.append(data)
        n += 1
    print(f"random-mutation fuzz: {n} runs, no finding", file=sys.stderr)
    return 0


def main() -> int:
    warnings.simplefilter("error")  # a stray numpy RuntimeWarning is a finding too
    engine = os.environ.get("MESH_FUZZ_ENGINE", "atheris")
    if engine == "atheris":
        try:
            import atheris
        except ImportError:
            engine = "random"
    if engine == "random":
        _load_reference()
        return _random_driver(sys.argv[1:])
    # Coverage feedback comes from the Python twins; the .so files are exercised as black boxes.
    _load_reference(atheris.instrument_imports)
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):  # no corpus given: start from seeds
        import tempfile

        corpus = Path(tempfile.mkdtemp(prefix="fastpath-fuzz-"))
        for i, seed in enumerate(_seeds()):
            (corpus / f"seed-{i}").write_bytes(seed)
        argv.append(str(corpus))
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
