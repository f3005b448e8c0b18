"""Pure-Python/numpy twins of every public fastpath function.

Same signatures, same results, same exception types and messages as the compiled modules.
Used by the tests (property tests compare the two) and as readable documentation of what the
Cython code does; the gateway never imports this module.
"""
from __future__ import annotations

import operator
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from fastpath.errors import CodecError, WireError

__all__ = [
    "DATATYPE_SIZES",
    "datatype_of",
    "decode_bytes",
    "decode_tensor",
    "element_count",
    "encode_bytes",
    "encode_tensor",
    "json_to_raw",
    "merge_raw",
    "numpy_dtype",
    "raw_to_json",
    "scan_fields",
    "scan_model",
    "split_raw",
]

MAX_ELEMENTS = 1 << 40

DATATYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8,
    "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
    "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8,
}

try:
    import ml_dtypes as _ml_dtypes

    _BF16 = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # BF16 then decodes to its raw bits as little-endian uint16
    _BF16 = np.dtype("<u2")

_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "BF16": _BF16, "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
_U2 = np.dtype("<u2")


# ----------------------------------------------------------------------------- helpers

def _who(kind: str, name: str) -> str:
    return f"{kind} {name!r}" if name else kind


def _fmt(dims: Iterable[Any]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _shape(shape: Any, who: str) -> tuple[list[int], int]:
    if isinstance(shape, (str, bytes)):
        raise CodecError(f"{who}: shape must be a sequence of integers, got {type(shape).__name__}")
    try:
        seq = tuple(shape)
    except TypeError:
        raise CodecError(
            f"{who}: shape must be a sequence of integers, got {type(shape).__name__}"
        ) from None
    dims: list[int] = []
    total = 1
    for item in seq:
        try:
            v = operator.index(item)
        except TypeError:
            raise CodecError(f"{who}: shape {_fmt(seq)} has a non-integer dimension {item!r}") from None
        if v < 0:
            raise CodecError(f"{who}: shape {_fmt(seq)} has negative dimension {v}")
        if v > MAX_ELEMENTS:
            raise CodecError(f"{who}: shape {_fmt(seq)} is absurd (more than 2**40 elements)")
        total *= v
        if total > MAX_ELEMENTS:
            raise CodecError(f"{who}: shape {_fmt(seq)} is absurd (more than 2**40 elements)")
        dims.append(v)
    return dims, total


def _itemsize(datatype: str, who: str) -> int:
    if datatype in DATATYPE_SIZES:
        return DATATYPE_SIZES[datatype]
    if datatype == "BYTES":
        return 0
    raise CodecError(f"{who}: unknown datatype {datatype!r}")


def _view(buf: Any, who: str, error: type[ValueError] = CodecError) -> memoryview:
    mv = memoryview(buf)
    if not mv.c_contiguous:
        raise error(f"{who}: buffer is not C-contiguous")
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
    return mv


def _walk_bytes(mv: memoryview, count: int, who: str) -> list[tuple[int, int]]:
    """(start, end) of each BYTES element's payload; same checks and messages as codec."""
    n = len(mv)
    pos = 0
    spans: list[tuple[int, int]] = []
    while True:
        k = len(spans)
        if count >= 0:
            if k == count:
                break
            if pos == n:
                raise CodecError(f"{who}: BYTES needs {count} elements, got {k}")
        elif pos == n:
            break
        pos = _one_element(mv, pos, k, who, spans)
    if pos != n:
        raise CodecError(
            f"{who}: BYTES holds more than {count} elements ({n - pos} trailing bytes at byte {pos})"
        )
    return spans


def _one_element(mv: memoryview, pos: int, index: int, who: str, spans: list[tuple[int, int]]) -> int:
    left = len(mv) - pos
    if left < 4:
        raise CodecError(
            f"{who}: BYTES element {index} has a truncated length prefix at byte {pos} ({left} bytes left)"
        )
    (size,) = struct.unpack_from("<I", mv, pos)
    if size > left - 4:
        raise CodecError(
            f"{who}: BYTES element {index} at byte {pos} declares {size} bytes but only {left - 4} remain"
        )
    spans.append((pos + 4, pos + 4 + size))
    return pos + 4 + size


# ----------------------------------------------------------------------------- datatypes

def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return _DTYPES[datatype]
    except KeyError:
        raise CodecError(f"unknown datatype {datatype!r}") from None


def datatype_of(arr: np.ndarray) -> str:
    dt = arr.dtype
    if dt == _BF16 and dt.kind == "V":
        return "BF16"
    if dt.kind in ("O", "S", "U"):
        return "BYTES"
    for datatype, candidate in _DTYPES.items():
        if datatype in ("BF16", "BYTES"):
            continue
        if candidate.kind == dt.kind and candidate.itemsize == dt.itemsize:
            return datatype
    raise CodecError(f"tensor: no KServe datatype for numpy dtype {dt}")


def element_count(shape: Sequence[int], name: str = "") -> int:
    return _shape(shape, _who("input", name))[1]


# ----------------------------------------------------------------------------- BYTES

def decode_bytes(buf: Any, count: int, name: str = "") -> np.ndarray:
    who = _who("input", name)
    if count < -1:
        raise CodecError(f"{who}: invalid BYTES element count {count}")
    mv = _view(buf, who)
    spans = _walk_bytes(mv, count, who)
    out = np.empty(len(spans), dtype=np.object_)
    for i, (start, end) in enumerate(spans):
        out[i] = bytes(mv[start:end])
    return out


def _element_bytes(x: Any, i: int) -> bytes:
    if isinstance(x, bytes):
        data = x
    elif isinstance(x, str):
        try:
            data = x.encode("utf-8")
        except UnicodeEncodeError:
            raise CodecError(f"tensor: BYTES element {i} is not encodable as UTF-8") from None
    elif isinstance(x, bytearray):
        data = bytes(x)
    else:
        raise CodecError(f"tensor: BYTES element {i} must be bytes or str, got {type(x).__name__}")
    if len(data) > 0xFFFFFFFF:
        raise CodecError(f"tensor: BYTES element {i} is {len(data)} bytes, over the 4 GiB length-prefix limit")
    return data


def encode_bytes(values: Any) -> bytes:
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in ("O", "S", "U"):
            raise CodecError(
                f"tensor: BYTES needs an object, bytes_ or str_ array, got dtype {values.dtype}"
            )
        items = values.ravel().tolist()
    elif isinstance(values, (str, bytes, bytearray, memoryview)):
        raise CodecError(f"tensor: BYTES values must be a sequence of elements, got {type(values).__name__}")
    else:
        try:
            items = list(values)
        except TypeError:
            raise CodecError(
                f"tensor: BYTES values must be a sequence of elements, got {type(values).__name__}"
            ) from None
    encoded = [_element_bytes(x, i) for i, x in enumerate(items)]
    return b"".join(struct.pack("<I", len(e)) + e for e in encoded)


# ----------------------------------------------------------------------------- tensors

def decode_tensor(buf: Any, datatype: str, shape: Sequence[int], name: str = "") -> np.ndarray:
    who = _who("input", name)
    itemsize = _itemsize(datatype, who)
    dims, count = _shape(shape, who)
    mv = _view(buf, who)
    if itemsize == 0:
        return decode_bytes(mv, count, name).reshape(dims)
    if len(mv) != count * itemsize:
        raise CodecError(f"{who}: {datatype} shape {_fmt(dims)} needs {count * itemsize} bytes, got {len(mv)}")
    arr = np.frombuffer(mv, dtype=_DTYPES[datatype]).reshape(dims)
    arr.flags.writeable = False
    return arr


def encode_tensor(arr: np.ndarray, datatype: str | None = None) -> bytes:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"encode_tensor needs a numpy.ndarray, got {type(arr).__name__}")
    if datatype is None:
        datatype = datatype_of(arr)
    if datatype == "BYTES":
        if arr.dtype.kind not in ("O", "S", "U"):
            raise CodecError(f"tensor: BYTES needs an object, bytes_ or str_ array, got dtype {arr.dtype}")
        return encode_bytes(arr)
    if datatype not in _DTYPES:
        raise CodecError(f"tensor: unknown datatype {datatype!r}")
    expected = _DTYPES[datatype]
    allowed = [expected] + ([_U2] if datatype == "BF16" else [])
    little = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    if little not in allowed:
        raise CodecError(f"tensor: {datatype} needs dtype {expected}, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=little).tobytes()


# ----------------------------------------------------------------------------- JSON (HTTP)

def _flatten(data: Any, who: str) -> list[Any]:
    if isinstance(data, (str, bytes, bytearray)):
        return [data]
    if isinstance(data, (list, tuple)):
        out: list[Any] = []
        for item in data:
            out.extend(_flatten(item, who))
        return out
    raise CodecError(f"{who}: BYTES data items must be str or bytes, got {type(data).__name__}")


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    f32 = np.asarray(values, dtype="<f4").reshape(-1)
    bits = f32.view("<u4").astype(np.uint64)
    sixteen = np.uint64(16)
    lsb = (bits >> sixteen) & np.uint64(1)
    out = ((bits + np.uint64(0x7FFF) + lsb) >> sixteen).astype("<u2")
    nan = np.isnan(f32)
    out[nan] = ((bits[nan] >> sixteen) | np.uint64(0x40)).astype("<u2")
    return out


def json_to_raw(data: Any, datatype: str, shape: Sequence[int], name: str = "") -> bytes:
    who = _who("input", name)
    itemsize = _itemsize(datatype, who)
    dims, count = _shape(shape, who)
    if itemsize == 0:
        items = _flatten(data, who)
        if len(items) != count:
            raise CodecError(f"{who}: shape {_fmt(dims)} needs {count} elements, got {len(items)}")
        try:
            return encode_bytes(items)
        except CodecError as exc:
            raise CodecError(f"{who}: {str(exc).partition(': ')[2]}") from None
    with np.errstate(all="ignore"):
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError, OverflowError):
            raise CodecError(f"{who}: {datatype} data is not a rectangular array of numbers") from None
        if arr.size != count:
            raise CodecError(f"{who}: shape {_fmt(dims)} needs {count} elements, got {arr.size}")
        target = _DTYPES[datatype]
        if count > 0:
            if datatype == "BOOL":
                if arr.dtype.kind != "b":
                    raise CodecError(f"{who}: BOOL data must be booleans, got {arr.dtype}")
            elif datatype.startswith(("UINT", "INT")):
                if arr.dtype.kind not in ("i", "u"):
                    objs = np.asarray(data, dtype=object).reshape(-1) if arr.dtype.kind in "fO" else None
                    if objs is None or not all(isinstance(x, int) for x in objs.tolist()):
                        raise CodecError(f"{who}: {datatype} data must be integers, got {arr.dtype}")
                    arr = objs
                info = np.iinfo(target)
                if not (info.min <= int(arr.min()) and int(arr.max()) <= info.max):
                    raise CodecError(f"{who}: {datatype} data out of range [{info.min}, {info.max}]")
            elif arr.dtype.kind not in ("i", "u", "f"):
                raise CodecError(f"{who}: {datatype} data must be numbers, got {arr.dtype}")
        if datatype == "BF16":
            return _bf16_bits(arr).tobytes()
        return arr.astype(target).tobytes()


def raw_to_json(buf: Any, datatype: str, shape: Sequence[int], name: str = "") -> list[Any]:
    who = _who("output", name)
    itemsize = _itemsize(datatype, who)
    dims, count = _shape(shape, who)
    mv = _view(buf, who)
    if itemsize == 0:
        out: list[Any] = []
        for i, (start, end) in enumerate(_walk_bytes(mv, count, who)):
            try:
                out.append(bytes(mv[start:end]).decode("utf-8"))
            except UnicodeDecodeError:
                raise CodecError(
                    f"{who}: BYTES element {i} is not valid UTF-8; request this output with binary_data"
                ) from None
        return out
    if len(mv) != count * itemsize:
        raise CodecError(f"{who}: {datatype} shape {_fmt(dims)} needs {count * itemsize} bytes, got {len(mv)}")
    with np.errstate(all="ignore"):
        if datatype == "BF16":
            bits = np.frombuffer(mv, dtype="<u2").astype("<u4") << 16
            return bits.view("<f4").astype(float).tolist()
        if datatype == "FP16":
            return np.frombuffer(mv, dtype="<f2").astype(float).tolist()
    arr = np.frombuffer(mv, dtype=_DTYPES[datatype])
    return arr.tolist()


# ----------------------------------------------------------------------------- batch

def merge_raw(parts: Sequence[Any]) -> bytes:
    return b"".join(parts)


def split_raw(
    buf: Any, datatype: str, batch_sizes: Sequence[int], shape_tail: Sequence[int], name: str = ""
) -> list[memoryview]:
    who = _who("output", name)
    itemsize = _itemsize(datatype, who)
    _, tail = _shape(shape_tail, who)
    sizes = tuple(batch_sizes)
    counts: list[int] = []
    for size in sizes:
        try:
            bs = operator.index(size)
        except TypeError:
            raise CodecError(f"{who}: batch sizes {_fmt(sizes)} must be integers") from None
        if bs < 0:
            raise CodecError(f"{who}: negative batch size {bs} in {_fmt(sizes)}")
        counts.append(bs * tail)
        if bs * tail > MAX_ELEMENTS or sum(counts) > MAX_ELEMENTS:
            raise CodecError(
                f"{who}: batch sizes {_fmt(sizes)} x shape tail {_fmt(shape_tail)} "
                f"is absurd (more than 2**40 elements)"
            )
    total = sum(counts)
    mv = _view(buf, who).toreadonly()
    if itemsize > 0:
        if len(mv) != total * itemsize:
            raise CodecError(
                f"{who}: {datatype} batch sizes {_fmt(sizes)} x shape tail {_fmt(shape_tail)} "
                f"need {total * itemsize} bytes, got {len(mv)}"
            )
        out, start = [], 0
        for c in counts:
            out.append(mv[start:start + c * itemsize])
            start += c * itemsize
        return out
    pieces: list[memoryview] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for c in counts:
        start = pos
        for _ in range(c):
            if pos == len(mv):
                raise CodecError(f"{who}: BYTES needs {total} elements, got {len(spans)}")
            pos = _one_element(mv, pos, len(spans), who, spans)
        pieces.append(mv[start:pos])
    if pos != len(mv):
        raise CodecError(
            f"{who}: BYTES holds more than {total} elements ({len(mv) - pos} trailing bytes at byte {pos})"
        )
    return pieces


# ----------------------------------------------------------------------------- wire

_MSG = "ModelInferRequest"


def _varint(mv: memoryview, pos: int, what: str) -> tuple[int, int]:
    value = 0
    for i in range(10):
        if pos + i >= len(mv):
            raise WireError(f"{_MSG}: truncated {what} varint at byte {pos}")
        byte = mv[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos + i + 1
    raise WireError(f"{_MSG}: {what} varint longer than 10 bytes at byte {pos}")


def _iter_fields(mv: memoryview) -> Iterator[tuple[int, int, int, int]]:
    """Yield top-level fields one at a time (so errors surface in walk order)."""
    n = len(mv)
    pos = 0
    while pos < n:
        at = pos
        tag, pos = _varint(mv, pos, "tag")
        if tag > 0xFFFFFFFF:
            raise WireError(f"{_MSG}: tag {tag} out of range at byte {at}")
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            raise WireError(f"{_MSG}: invalid field number 0 at byte {at}")
        if wire_type == 0:
            _, end = _varint(mv, pos, f"field {field}")
            yield field, 0, pos, end
            pos = end
        elif wire_type == 2:
            length, start = _varint(mv, pos, f"field {field} length")
            if length > n - start:
                raise WireError(
                    f"{_MSG}: field {field} length {length} at byte {at} runs past the end "
                    f"({n - start} bytes left)"
                )
            yield field, 2, start, start + length
            pos = start + length
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            if n - pos < size:
                raise WireError(
                    f"{_MSG}: field {field} fixed{size * 8} truncated at byte {pos} ({n - pos} bytes left)"
                )
            yield field, wire_type, pos, pos + size
            pos += size
        elif wire_type in (3, 4):
            raise WireError(f"{_MSG}: field {field} uses group wire type {wire_type} at byte {at}")
        else:
            raise WireError(f"{_MSG}: field {field} has invalid wire type {wire_type} at byte {at}")


def scan_fields(buf: Any) -> list[tuple[int, int, int, int]]:
    return list(_iter_fields(_view(buf, _MSG, WireError)))


def scan_model(buf: Any) -> tuple[str, str]:
    mv = _view(buf, _MSG, WireError)
    values = {1: "", 2: ""}
    for field, wire_type, start, end in _iter_fields(mv):
        if wire_type == 2 and field in values:
            try:
                values[field] = bytes(mv[start:end]).decode("utf-8")
            except UnicodeDecodeError:
                label = "model_name" if field == 1 else "model_version"
                raise WireError(f"{_MSG}: field {label} is not valid UTF-8") from None
    return values[1], values[2]
