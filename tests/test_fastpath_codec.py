"""fastpath.codec: compiled module vs pure-Python twin vs numpy/tritonclient."""
from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpath import codec as fast
from fastpath import reference as ref
from fastpath.errors import CodecError

tritonclient_utils = pytest.importorskip("tritonclient.utils")

IMPLS = [pytest.param(fast, id="compiled"), pytest.param(ref, id="reference")]
FIXED = sorted(fast.DATATYPE_SIZES)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4)
names = st.text(min_size=0, max_size=8)
elements = st.one_of(st.binary(max_size=24), st.text(max_size=12))


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    """('ok', value) or ('err', 'ExcType: message'), comparable across implementations."""
    try:
        value = fn(*args)
    except (CodecError, TypeError) as exc:
        return "err", f"{type(exc).__name__}: {exc}"
    return "ok", value


def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return a.tolist() == b.tolist()
    return a.tobytes() == b.tobytes()


def test_compiled_modules_are_compiled() -> None:
    for mod in (fast,):
        assert mod.__file__ is not None and mod.__file__.endswith((".so", ".pyd")), mod.__file__
    assert isinstance(fast.DEBUG, bool)


def test_unbuilt_package_fails_loudly(tmp_path: Any) -> None:
    """Without the compiled modules, `import fastpath` raises; it never uses the reference."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    src = Path(fast.__file__).parent
    (tmp_path / "fastpath").mkdir()
    for py in src.glob("*.py"):
        shutil.copy(py, tmp_path / "fastpath" / py.name)
    # An editable install adds a meta-path finder that would serve fastpath.codec
    # from the source tree; drop it so only the copied, unbuilt package is seen.
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in "
            "getattr(f, '__module__', '') and '__editable__' not in getattr(f, '__name__', '')]; import fastpath")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=False,
                          capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0
    assert "compiled extensions are missing" in proc.stderr


def test_datatype_tables() -> None:
    assert fast.DATATYPE_SIZES == ref.DATATYPE_SIZES
    assert "BYTES" not in fast.DATATYPE_SIZES
    for dt, size in fast.DATATYPE_SIZES.items():
        npdt = fast.numpy_dtype(dt)
        assert npdt == ref.numpy_dtype(dt)
        assert npdt.itemsize == size
        assert npdt.byteorder in "<|="
        assert fast.datatype_of(np.empty(1, dtype=npdt)) == dt or (dt == "BF16" and npdt == np.dtype("<u2"))
    assert fast.numpy_dtype("BYTES") == np.object_
    assert fast.numpy_dtype("BOOL") == np.bool_
    for arr in (np.array([b"a"]), np.array(["a"]), np.array([b"a"], dtype=object)):
        assert fast.datatype_of(arr) == ref.datatype_of(arr) == "BYTES"


@pytest.mark.parametrize("impl", IMPLS)
def test_unknown_datatype(impl: Any) -> None:
    with pytest.raises(CodecError, match="FP8"):
        impl.numpy_dtype("FP8")
    with pytest.raises(CodecError, match="input 'x'.*FP8"):
        impl.decode_tensor(b"", "FP8", [0], "x")
    with pytest.raises(CodecError, match="complex"):
        impl.datatype_of(np.zeros(1, dtype=np.complex64))


# ----------------------------------------------------------------------------- fixed-size

@st.composite
def fixed_tensors(draw: Any) -> tuple[str, list[int], bytes]:
    datatype = draw(st.sampled_from(FIXED))
    shape = draw(shapes)
    count = int(np.prod(shape, dtype=np.int64))
    raw = draw(st.binary(min_size=count * fast.DATATYPE_SIZES[datatype],
                         max_size=count * fast.DATATYPE_SIZES[datatype]))
    return datatype, shape, raw


@SETTINGS
@given(fixed_tensors(), names, st.sampled_from([bytes, bytearray, memoryview]))
def test_decode_fixed_matches_numpy(t: tuple[str, list[int], bytes], name: str, wrap: Any) -> None:
    datatype, shape, raw = t
    buf = wrap(raw)
    expected = np.frombuffer(raw, dtype=fast.numpy_dtype(datatype)).reshape(shape)
    for impl in (fast, ref):
        arr = impl.decode_tensor(buf, datatype, shape, name)
        assert same_array(arr, expected)
        assert not arr.flags.writeable
        if arr.size:
            assert np.shares_memory(arr, np.frombuffer(buf, dtype=np.uint8))
        assert impl.encode_tensor(arr, datatype) == raw
        assert impl.encode_tensor(arr) == raw


@SETTINGS
@given(fixed_tensors(), names, st.integers(-7, 7).filter(bool))
def test_wrong_byte_size_names_tensor(t: tuple[str, list[int], bytes], name: str, delta: int) -> None:
    datatype, shape, raw = t
    buf = raw + b"\x00" * delta if delta > 0 else raw[:delta]
    if len(buf) == len(raw):
        return
    results = [outcome(impl.decode_tensor, buf, datatype, shape, name) for impl in (fast, ref)]
    assert results[0] == results[1]
    kind, msg = results[0]
    assert kind == "err" and msg.startswith("CodecError: ")
    assert f"needs {len(raw)} bytes, got {len(buf)}" in msg
    if name:
        assert repr(name) in msg


def test_message_format() -> None:
    with pytest.raises(CodecError) as info:
        fast.decode_tensor(b"\x00" * 20, "FP32", [2, 3], "x")
    assert str(info.value) == "input 'x': FP32 shape [2,3] needs 24 bytes, got 20"


@SETTINGS
@given(st.sampled_from(FIXED), st.lists(st.integers(0, 3), min_size=1, max_size=4), st.booleans(),
       st.booleans())
def test_encode_noncontiguous_and_big_endian(datatype: str, shape: list[int], transpose: bool,
                                              swap: bool) -> None:
    dt = fast.numpy_dtype(datatype)
    raw = bytes(range(256)) * 4
    count = int(np.prod(shape))
    base = np.frombuffer(raw[: count * dt.itemsize], dtype=dt).reshape(shape)
    arr = base.T if transpose else base
    expected = np.ascontiguousarray(arr).tobytes()
    if swap and dt.itemsize > 1 and dt.kind != "V":
        arr = arr.astype(dt.newbyteorder(">"))
    assert fast.encode_tensor(arr, datatype) == ref.encode_tensor(arr, datatype) == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_encode_wrong_dtype(impl: Any) -> None:
    with pytest.raises(CodecError, match="FP32 needs dtype float32, got int32"):
        impl.encode_tensor(np.zeros(3, dtype=np.int32), "FP32")
    with pytest.raises(CodecError, match="BYTES"):
        impl.encode_tensor(np.zeros(3, dtype=np.int32), "BYTES")
    with pytest.raises(CodecError, match="INT8"):
        impl.encode_tensor(np.array([b"a"], dtype=object), "INT8")
    with pytest.raises(TypeError):
        impl.encode_tensor([1, 2, 3], "INT8")
    # raw bfloat16 bits may be given as uint16
    assert impl.encode_tensor(np.array([0x3F80], dtype="<u2"), "BF16") == b"\x80\x3f"


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("impl", IMPLS)
def test_shape_validation(impl: Any) -> None:
    assert impl.element_count([]) == 1
    assert impl.element_count((2, 0, 5)) == 0
    assert impl.element_count([np.int64(3), 4]) == 12
    with pytest.raises(CodecError, match=r"input 'w': shape \[2,-1\] has negative dimension -1"):
        impl.element_count([2, -1], "w")
    with pytest.raises(CodecError, match="absurd"):
        impl.element_count([2**20, 2**20, 2], "w")
    with pytest.raises(CodecError, match="absurd"):
        impl.element_count([2**64], "w")
    with pytest.raises(CodecError, match="non-integer"):
        impl.element_count([1.5], "w")
    with pytest.raises(CodecError, match="sequence"):
        impl.element_count(3, "w")
    with pytest.raises(CodecError, match="negative"):
        impl.decode_tensor(b"", "FP32", [0, -2], "w")
    with pytest.raises(CodecError, match="input 'w'.*negative"):
        impl.decode_tensor(b"", "BYTES", [-1], "w")


@SETTINGS
@given(st.lists(st.integers(-(2**45), 2**45), max_size=5), names)
def test_element_count_agrees(shape: list[int], name: str) -> None:
    assert outcome(fast.element_count, shape, name) == outcome(ref.element_count, shape, name)


# ----------------------------------------------------------------------------- BYTES

def triton_serialize(items: list[Any]) -> bytes:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    out = tritonclient_utils.serialize_byte_tensor(arr)
    return out.item() if out.size else b""  # a 0-d object array holding the bytes


@SETTINGS
@given(st.lists(elements, max_size=40))
def test_bytes_encode_matches_tritonclient(items: list[Any]) -> None:
    expected = triton_serialize(items)
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    assert fast.encode_bytes(items) == expected
    assert fast.encode_bytes(tuple(items)) == expected
    assert fast.encode_bytes(iter(items)) == expected
    assert fast.encode_bytes(arr) == expected
    assert fast.encode_tensor(arr) == expected
    assert ref.encode_bytes(items) == expected
    assert ref.encode_tensor(arr, "BYTES") == expected


@SETTINGS
@given(st.lists(st.binary(max_size=24), max_size=40), names)
def test_bytes_decode_matches_tritonclient(items: list[bytes], name: str) -> None:
    raw = fast.encode_bytes(items)
    expected = tritonclient_utils.deserialize_bytes_tensor(raw)
    for impl in (fast, ref):
        for buf in (raw, bytearray(raw), memoryview(raw)):
            got = impl.decode_bytes(buf, -1, name)
            assert got.dtype == object and got.shape == (len(items),)
            assert got.tolist() == expected.tolist() == items
            assert all(type(x) is bytes for x in got.tolist())
            assert impl.decode_bytes(buf, len(items), name).tolist() == items


@SETTINGS
@given(st.lists(st.binary(max_size=8), max_size=24), shapes, names)
def test_bytes_tensor_roundtrip(items: list[bytes], shape: list[int], name: str) -> None:
    count = int(np.prod(shape))
    items = (items * (count // max(len(items), 1) + 1))[:count] if items else [b""] * count
    raw = fast.encode_bytes(items)
    for impl in (fast, ref):
        arr = impl.decode_tensor(raw, "BYTES", shape, name)
        assert arr.shape == tuple(shape) and arr.dtype == object
        assert arr.ravel().tolist() == items
        assert impl.encode_tensor(arr) == raw


@SETTINGS
@given(st.lists(st.binary(max_size=6).map(lambda b: b.rstrip(b"\0")), max_size=12),
       st.lists(st.text(max_size=6).map(lambda s: s.rstrip("\0")), max_size=12))
def test_bytes_fixed_width_numpy_arrays(bs: list[bytes], ss: list[str]) -> None:
    s_arr = np.array(bs, dtype="S7") if bs else np.empty(0, dtype="S7")
    u_arr = np.array(ss, dtype="U7") if ss else np.empty(0, dtype="U7")
    assert fast.encode_bytes(s_arr) == ref.encode_bytes(s_arr) == triton_serialize(bs)
    assert fast.encode_bytes(u_arr) == ref.encode_bytes(u_arr) == fast.encode_bytes(ss)
    big = u_arr.astype(">U7")
    assert fast.encode_bytes(big) == ref.encode_bytes(big) == fast.encode_bytes(ss)
    two_d = np.array(ss[:6] + [""] * (6 - len(ss[:6])), dtype="U7").reshape(2, 3).T
    assert fast.encode_bytes(two_d) == ref.encode_bytes(two_d) == fast.encode_bytes(two_d.ravel().tolist())


@SETTINGS
@given(st.binary(max_size=64), st.integers(-2, 6), names)
def test_bytes_decode_garbage_agrees(buf: bytes, count: int, name: str) -> None:
    a = outcome(fast.decode_bytes, buf, count, name)
    b = outcome(ref.decode_bytes, buf, count, name)
    if a[0] == "ok":
        assert b[0] == "ok" and a[1].tolist() == b[1].tolist()
    else:
        assert a == b
        assert a[1].startswith("CodecError: ")
        if name:
            assert repr(name) in a[1]


@pytest.mark.parametrize("impl", IMPLS)
def test_bytes_errors(impl: Any) -> None:
    good = struct.pack("<I", 3) + b"abc"
    with pytest.raises(CodecError, match=r"input 's': BYTES element 1 has a truncated length prefix"):
        impl.decode_bytes(good + b"\x01\x00", -1, "s")
    with pytest.raises(CodecError, match=r"input 's': BYTES element 0 at byte 0 declares 4 bytes but only 3 remain"):
        impl.decode_tensor(struct.pack("<I", 4) + b"abc", "BYTES", [1], "s")
    with pytest.raises(CodecError, match=r"declares 4294967295 bytes"):
        impl.decode_bytes(b"\xff\xff\xff\xff" + b"x" * 10, -1, "s")
    with pytest.raises(CodecError, match=r"input 's': BYTES holds more than 1 elements"):
        impl.decode_tensor(good + good, "BYTES", [1], "s")
    with pytest.raises(CodecError, match=r"input 's': BYTES needs 3 elements, got 1"):
        impl.decode_tensor(good, "BYTES", [3], "s")
    with pytest.raises(CodecError, match="invalid BYTES element count"):
        impl.decode_bytes(good, -5, "s")
    with pytest.raises(CodecError, match="element 1 must be bytes or str, got int"):
        impl.encode_bytes([b"a", 3])
    with pytest.raises(CodecError, match="not encodable as UTF-8"):
        impl.encode_bytes(["\ud800"])
    with pytest.raises(CodecError, match="sequence"):
        impl.encode_bytes(b"abc")
    with pytest.raises(CodecError, match="not C-contiguous"):
        impl.decode_bytes(memoryview(good * 2)[::2], -1, "s")
    assert impl.decode_bytes(b"", -1).shape == (0,)
    assert impl.decode_tensor(b"", "BYTES", [0, 3]).shape == (0, 3)
    assert impl.encode_bytes([]) == b""
    assert impl.encode_bytes([bytearray(b"xy"), np.bytes_(b"z"), np.str_("é")]) == (
        b"\x02\0\0\0xy\x01\0\0\0z\x02\0\0\0\xc3\xa9"
    )


# ----------------------------------------------------------------------------- JSON

numeric_data = st.recursive(
    st.one_of(st.integers(-(2**65), 2**65), st.floats(allow_nan=False, width=64), st.booleans(),
              st.text(max_size=3), st.none()),
    lambda children: st.lists(children, max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(numeric_data, st.sampled_from(FIXED + ["BYTES"]), shapes, names)
def test_json_to_raw_agrees_on_anything(data: Any, datatype: str, shape: list[int], name: str) -> None:
    a = outcome(fast.json_to_raw, data, datatype, shape, name)
    b = outcome(ref.json_to_raw, data, datatype, shape, name)
    assert a == b
    if a[0] == "err" and name:
        assert repr(name) in a[1]


@st.composite
def typed_arrays(draw: Any) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from(FIXED))
    shape = draw(shapes)
    count = int(np.prod(shape))
    if datatype in ("FP16", "BF16", "FP32", "FP64"):
        width = {"FP16": 16, "BF16": 32, "FP32": 32, "FP64": 64}[datatype]
        values = draw(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=width),
                               min_size=count, max_size=count))
        if datatype == "BF16":  # keep exactly representable values only
            f32 = np.array(values, dtype="<f4")
            values = (f32.view("<u4") & np.uint32(0xFFFF0000)).view("<f4").astype(np.float64).tolist()
        return datatype, np.array(values, dtype=np.float64).reshape(shape)
    if datatype == "BOOL":
        values = draw(st.lists(st.booleans(), min_size=count, max_size=count))
        return datatype, np.array(values, dtype=np.bool_).reshape(shape)
    info = np.iinfo(fast.numpy_dtype(datatype))
    values = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=count, max_size=count))
    return datatype, np.array(values, dtype=fast.numpy_dtype(datatype)).reshape(shape)


@SETTINGS
@given(typed_arrays(), names)
def test_json_roundtrip(t: tuple[str, np.ndarray], name: str) -> None:
    datatype, arr = t
    data = arr.tolist()
    for impl in (fast, ref):
        raw = impl.json_to_raw(data, datatype, list(arr.shape), name)
        if datatype not in ("BF16", "FP16"):
            assert raw == arr.astype(fast.numpy_dtype(datatype)).tobytes()
        back = impl.raw_to_json(raw, datatype, list(arr.shape), name)
        assert isinstance(back, list) and len(back) == arr.size
        assert repr(back) == repr(arr.ravel().tolist())


@SETTINGS
@given(st.binary(max_size=48), st.sampled_from(FIXED + ["BYTES"]), shapes, names)
def test_raw_to_json_agrees_on_garbage(buf: bytes, datatype: str, shape: list[int], name: str) -> None:
    a = outcome(fast.raw_to_json, buf, datatype, shape, name)
    b = outcome(ref.raw_to_json, buf, datatype, shape, name)
    assert repr(a) == repr(b)


@SETTINGS
@given(st.lists(st.one_of(st.text(max_size=8), st.binary(max_size=8)), max_size=12), names)
def test_json_bytes(items: list[Any], name: str) -> None:
    for impl in (fast, ref):
        raw = impl.json_to_raw(items, "BYTES", [len(items)], name)
        assert raw == fast.encode_bytes(items)
        texts = [x if isinstance(x, str) else None for x in items]
        if all(t is not None for t in texts):
            assert impl.raw_to_json(raw, "BYTES", [len(items)], name) == items


@pytest.mark.parametrize("impl", IMPLS)
def test_json_errors(impl: Any) -> None:
    with pytest.raises(CodecError, match=r"input 'j': shape \[3\] needs 3 elements, got 2"):
        impl.json_to_raw([1, 2], "INT32", [3], "j")
    with pytest.raises(CodecError, match="out of range"):
        impl.json_to_raw([300], "UINT8", [1], "j")
    with pytest.raises(CodecError, match="must be integers"):
        impl.json_to_raw([1.5], "INT32", [1], "j")
    with pytest.raises(CodecError, match="must be booleans"):
        impl.json_to_raw([1], "BOOL", [1], "j")
    with pytest.raises(CodecError, match="rectangular"):
        impl.json_to_raw([[1, 2], [3]], "FP32", [3], "j")
    with pytest.raises(CodecError, match="str or bytes"):
        impl.json_to_raw([1], "BYTES", [1], "j")
    with pytest.raises(CodecError, match="output 'o': BYTES element 0 is not valid UTF-8.*binary_data"):
        impl.raw_to_json(b"\x01\0\0\0\xff", "BYTES", [1], "o")
    assert impl.json_to_raw([[1, 2], [3, 4]], "INT16", [2, 2]) == np.arange(1, 5, dtype="<i2").tobytes()
    assert impl.json_to_raw([1.0, 3], "BF16", [2]) == b"\x80\x3f\x40\x40"
    assert impl.json_to_raw([True, False], "BOOL", [2]) == b"\x01\x00"
    assert impl.json_to_raw([], "FP32", [0]) == b""
    assert impl.raw_to_json(b"\x80\x3f\x40\x40", "BF16", [2]) == [1.0, 3.0]
    assert impl.raw_to_json(np.float16([0.5]).tobytes(), "FP16", [1]) == [0.5]
    assert impl.raw_to_json(b"\x01\x00", "BOOL", [2]) == [True, False]
