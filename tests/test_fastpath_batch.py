"""fastpath.batch: merge_raw / split_raw, compiled vs the Python twin."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpath import batch as fast
from fastpath import codec
from fastpath import reference as ref
from fastpath.errors import CodecError

IMPLS = [pytest.param(fast, id="compiled"), pytest.param(ref, id="reference")]
FIXED = sorted(codec.DATATYPE_SIZES)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
names = st.text(max_size=8)
tails = st.lists(st.integers(0, 3), max_size=3)


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        value = fn(*args)
    except CodecError as exc:
        return "err", str(exc)
    return "ok", [bytes(m) for m in value]


def test_compiled() -> None:
    assert fast.__file__ is not None and fast.__file__.endswith((".so", ".pyd"))


@SETTINGS
@given(st.lists(st.binary(max_size=64), max_size=20),
       st.lists(st.sampled_from([bytes, bytearray, memoryview])))
def test_merge_is_concatenation(parts: list[bytes], wraps: list[Any]) -> None:
    wrapped = [wraps[i % len(wraps)](p) if wraps else p for i, p in enumerate(parts)]
    expected = b"".join(parts)
    for impl in (fast, ref):
        out = impl.merge_raw(wrapped)
        assert type(out) is bytes and out == expected
        assert impl.merge_raw(tuple(wrapped)) == expected


def test_merge_large_and_errors() -> None:
    big = [np.full(70_000, i, dtype=np.uint8).tobytes() for i in range(3)]
    assert fast.merge_raw(big) == b"".join(big)
    assert fast.merge_raw([np.arange(4, dtype=np.float32)]) == np.arange(4, dtype=np.float32).tobytes()
    assert fast.merge_raw(iter([b"a", b"b"])) == b"ab"
    for impl in (fast, ref):
        with pytest.raises(TypeError):
            impl.merge_raw([b"a", "str"])


@st.composite
def fixed_batches(draw: Any) -> tuple[str, list[int], list[int], list[bytes]]:
    datatype = draw(st.sampled_from(FIXED))
    tail = draw(tails)
    sizes = draw(st.lists(st.integers(0, 4), max_size=8))
    per = int(np.prod(tail)) * codec.DATATYPE_SIZES[datatype]
    parts = [draw(st.binary(min_size=b * per, max_size=b * per)) for b in sizes]
    return datatype, sizes, tail, parts


@SETTINGS
@given(fixed_batches(), names, st.sampled_from([bytes, bytearray]))
def test_split_fixed_inverts_merge(t: Any, name: str, wrap: Any) -> None:
    datatype, sizes, tail, parts = t
    for impl in (fast, ref):
        merged = wrap(impl.merge_raw(parts))
        pieces = impl.split_raw(merged, datatype, sizes, tail, name)
        assert [bytes(p) for p in pieces] == parts
        for p in pieces:
            assert isinstance(p, memoryview) and p.readonly
            assert p.obj is merged  # zero-copy: a slice of the caller's buffer
            if p.nbytes:
                assert np.shares_memory(np.frombuffer(p, np.uint8), np.frombuffer(merged, np.uint8))


@st.composite
def bytes_batches(draw: Any) -> tuple[list[int], list[int], list[list[bytes]]]:
    tail = draw(st.lists(st.integers(0, 2), max_size=2))
    per = int(np.prod(tail))
    sizes = draw(st.lists(st.integers(0, 3), max_size=6))
    elems = [draw(st.lists(st.binary(max_size=10), min_size=b * per, max_size=b * per)) for b in sizes]
    return sizes, tail, elems


@SETTINGS
@given(bytes_batches(), names)
def test_split_bytes_inverts_merge(t: Any, name: str) -> None:
    sizes, tail, elems = t
    parts = [codec.encode_bytes(e) for e in elems]
    for impl in (fast, ref):
        merged = impl.merge_raw(parts)
        pieces = impl.split_raw(merged, "BYTES", sizes, tail, name)
        assert [bytes(p) for p in pieces] == parts
        assert all(p.readonly and p.obj is merged for p in pieces)
        for piece, e in zip(pieces, elems):
            assert codec.decode_bytes(piece, len(e), name).tolist() == e


@SETTINGS
@given(st.binary(max_size=48), st.sampled_from(FIXED + ["BYTES"]),
       st.lists(st.integers(-1, 3), max_size=5), tails, names)
def test_split_garbage_agrees(buf: bytes, datatype: str, sizes: list[int], tail: list[int], name: str) -> None:
    a = outcome(fast.split_raw, buf, datatype, sizes, tail, name)
    b = outcome(ref.split_raw, buf, datatype, sizes, tail, name)
    assert a == b
    if a[0] == "err" and name:
        assert repr(name) in a[1]


@pytest.mark.parametrize("impl", IMPLS)
def test_split_errors(impl: Any) -> None:
    with pytest.raises(CodecError, match=r"output 'y': FP32 batch sizes \[1,2\] x shape tail \[4\] need 48 bytes, got 44"):
        impl.split_raw(b"\0" * 44, "FP32", [1, 2], [4], "y")
    with pytest.raises(CodecError, match=r"output 'y': negative batch size -1"):
        impl.split_raw(b"", "FP32", [1, -1], [4], "y")
    with pytest.raises(CodecError, match=r"output 'y': shape \[-4\] has negative dimension"):
        impl.split_raw(b"", "FP32", [1], [-4], "y")
    with pytest.raises(CodecError, match="absurd"):
        impl.split_raw(b"", "FP32", [2**40, 1], [1], "y")
    with pytest.raises(CodecError, match="unknown datatype"):
        impl.split_raw(b"", "FP8", [1], [], "y")
    one = codec.encode_bytes([b"abc"])
    with pytest.raises(CodecError, match=r"output 'y': BYTES needs 2 elements, got 1"):
        impl.split_raw(one, "BYTES", [1, 1], [], "y")
    with pytest.raises(CodecError, match=r"output 'y': BYTES holds more than 1 elements"):
        impl.split_raw(one + one, "BYTES", [1], [], "y")
    with pytest.raises(CodecError, match=r"output 'y': BYTES element 1 at byte 7 declares 3 bytes but only 1 remain"):
        impl.split_raw(one + one[:5], "BYTES", [1, 1], [], "y")
    with pytest.raises(CodecError, match=r"truncated length prefix"):
        impl.split_raw(one + b"\x01", "BYTES", [1, 1], [], "y")
    assert impl.split_raw(b"", "FP32", [], [3], "y") == []
    # a float32 memoryview is split by bytes, not by items
    arr = np.arange(6, dtype=np.float32)
    pieces = impl.split_raw(memoryview(arr), "FP32", [1, 2], [2], "y")
    assert [bytes(p) for p in pieces] == [arr[:2].tobytes(), arr[2:].tobytes()]
