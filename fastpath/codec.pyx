"""KServe v2 tensor codec: raw little-endian tensor bytes <-> numpy arrays.

Bytes and memoryviews in, arrays and ``bytes`` out; no I/O. Fixed-size datatypes decode to
read-only zero-copy views of the caller's buffer; BYTES tensors (4-byte little-endian length
prefix + payload per element) are walked in C with every prefix checked against the bytes
that remain. ``fastpath.reference`` holds a pure-Python twin of every function here.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint32_t
from libc.string cimport memcpy

from fastpath._reader cimport (
    FP_U32_MAX, Reader, R_OK, reader_init, reader_left, reader_take, reader_bytes_element,
)

import numpy as np

from fastpath.errors import CodecError

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    bint PyBytes_Check(object o)
    bint PyByteArray_Check(object o)
    bint PyUnicode_Check(object o)
    bint PyList_CheckExact(object o)
    bint PyTuple_CheckExact(object o)
    object PyNumber_Index(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    PyObject* PySequence_Fast_GET_ITEM(object o, Py_ssize_t i)
    Py_ssize_t PySequence_Fast_GET_SIZE(object o)

__all__ = [
    "DATATYPE_SIZES",
    "DEBUG",
    "datatype_of",
    "decode_bytes",
    "decode_tensor",
    "element_count",
    "encode_bytes",
    "encode_tensor",
    "json_to_raw",
    "numpy_dtype",
    "raw_to_json",
]

IF MESH_DEBUG:
    DEBUG = True
ELSE:
    DEBUG = False

#: Bytes per element of each fixed-size KServe datatype (BYTES is variable-sized: absent).
DATATYPE_SIZES = {
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

# Private copies: callers mutating DATATYPE_SIZES cannot change codec behaviour.
cdef dict _SIZES = dict(DATATYPE_SIZES)
cdef dict _DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "BF16": _BF16, "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
cdef dict _KIND_SIZE_TO_DATATYPE = {
    ("b", 1): "BOOL",
    ("u", 1): "UINT8", ("u", 2): "UINT16", ("u", 4): "UINT32", ("u", 8): "UINT64",
    ("i", 1): "INT8", ("i", 2): "INT16", ("i", 4): "INT32", ("i", 8): "INT64",
    ("f", 2): "FP16", ("f", 4): "FP32", ("f", 8): "FP64",
}
cdef object _U2 = np.dtype("<u2")
cdef object _U4 = np.dtype("<u4")
cdef object _F4 = np.dtype("<f4")
cdef object _F8 = np.dtype("<f8")
cdef object _OBJECT = np.dtype(np.object_)
cdef object _UINT8 = np.dtype(np.uint8)
cdef object _BIAS = np.uint64(0x7FFF)
cdef object _SIXTEEN = np.uint64(16)
cdef object _ONE = np.uint64(1)
cdef object _QUIET = np.uint64(0x40)


# ----------------------------------------------------------------------------- helpers

cdef str who_of(str kind, str name):
    """``input 'x'`` -- how error messages name a tensor."""
    if name:
        return f"{kind} {name!r}"
    return kind


cdef str fmt_dims(object dims):
    return "[" + ",".join([str(d) for d in dims]) + "]"


cdef int64_t index_as_int64(object v) except? -2:
    """An int (from PyNumber_Index) as int64, clamped: below zero -> -1, above 2**40 ->
    2**40 + 1, so callers compare in C."""
    cdef int overflow = 0
    cdef long long value = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow > 0:
        return FP_MAX_ELEMENTS + 1
    if overflow < 0 or value < 0:
        return -1
    if value > FP_MAX_ELEMENTS:
        return FP_MAX_ELEMENTS + 1
    return value


cdef int64_t shape_count(object shape, str who, list dims_out) except -1:
    """Validate ``shape`` and return its element count; append the dims (as ints) to
    ``dims_out`` unless it is None."""
    cdef int64_t total = 1
    cdef int64_t d
    cdef object v
    cdef object seq
    if isinstance(shape, (str, bytes)):
        raise CodecError(f"{who}: shape must be a sequence of integers, got {type(shape).__name__}")
    if PyList_CheckExact(shape) or PyTuple_CheckExact(shape):
        seq = shape
    else:
        try:
            seq = tuple(shape)
        except TypeError:
            raise CodecError(
                f"{who}: shape must be a sequence of integers, got {type(shape).__name__}"
            ) from None
    for item in seq:
        try:
            v = PyNumber_Index(item)
        except TypeError:
            raise CodecError(f"{who}: shape {fmt_dims(seq)} has a non-integer dimension {item!r}") from None
        d = index_as_int64(v)
        if d < 0:
            raise CodecError(f"{who}: shape {fmt_dims(seq)} has negative dimension {v}")
        if d > FP_MAX_ELEMENTS:
            raise CodecError(f"{who}: shape {fmt_dims(seq)} is absurd (more than 2**40 elements)")
        if d > 0 and total > FP_MAX_ELEMENTS // d:  # total * d would pass 2**40 (or overflow)
            raise CodecError(f"{who}: shape {fmt_dims(seq)} is absurd (more than 2**40 elements)")
        total *= d
        if total > FP_MAX_ELEMENTS:
            raise CodecError(f"{who}: shape {fmt_dims(seq)} is absurd (more than 2**40 elements)")
        if dims_out is not None:
            dims_out.append(v)
    return total


cdef Py_ssize_t fixed_itemsize(str datatype, str who) except -1:
    """Itemsize of a fixed-size datatype, 0 for BYTES; CodecError for anything else."""
    size = _SIZES.get(datatype)
    if size is not None:
        return size
    if datatype == "BYTES":
        return 0
    raise CodecError(f"{who}: unknown datatype {datatype!r}")


cdef int get_buffer(object buf, Py_buffer* view, str who) except -1:
    """Acquire a C-contiguous byte view of ``buf`` (release with PyBuffer_Release)."""
    try:
        PyObject_GetBuffer(buf, view, PyBUF_SIMPLE)
    except (BufferError, ValueError):
        raise CodecError(f"{who}: buffer is not C-contiguous") from None
    return 0


cdef int raise_bytes_short(str who, Py_ssize_t index, Reader* r, Py_ssize_t declared) except -1:
    """Raise the error for a BYTES element that does not fit in what is left of ``r``."""
    cdef Py_ssize_t left = reader_left(r)
    if declared < 0:
        raise CodecError(
            f"{who}: BYTES element {index} has a truncated length prefix "
            f"at byte {r.pos} ({left} bytes left)"
        )
    raise CodecError(
        f"{who}: BYTES element {index} at byte {r.pos} declares {declared} bytes "
        f"but only {left - 4} remain"
    )


cdef Py_ssize_t _count_elements(Reader* r, Py_ssize_t count, str who) except -1:
    """Walk BYTES elements from ``r.pos`` without keeping them; return how many there are.

    ``count >= 0``: exactly ``count`` elements must fill the buffer; ``-1``: as many as fit
    exactly. ``r.pos`` is restored before returning.
    """
    cdef Py_ssize_t start = r.pos
    cdef Py_ssize_t k = 0
    cdef Py_ssize_t size
    cdef const unsigned char* data = NULL
    while True:
        if count >= 0:
            if k == count:
                break
            if reader_left(r) == 0:
                raise CodecError(f"{who}: BYTES needs {count} elements, got {k}")
        elif reader_left(r) == 0:
            break
        if reader_bytes_element(r, &data, &size) != R_OK:
            raise_bytes_short(who, k, r, size)
        k += 1
    if reader_left(r) != 0:
        raise CodecError(
            f"{who}: BYTES holds more than {count} elements "
            f"({reader_left(r)} trailing bytes at byte {r.pos})"
        )
    r.pos = start
    return k


cdef object _decode_bytes_view(const unsigned char* buf, Py_ssize_t n, Py_ssize_t count, str who):
    """BYTES payload -> 1-D object array of ``bytes``."""
    cdef Reader r
    cdef Py_ssize_t k, i, size
    cdef const unsigned char* data = NULL
    cdef Py_buffer oview
    cdef PyObject** slots
    cdef PyObject* old
    cdef object item
    reader_init(&r, buf, n)
    k = _count_elements(&r, count, who)
    out = np.empty(k, dtype=_OBJECT)
    if k == 0:
        return out
    # numpy object arrays store one PyObject* per element (here all Py_None, as np.empty
    # fills them); write the new bytes objects straight into those slots.
    PyObject_GetBuffer(out, &oview, PyBUF_WRITABLE)
    try:
        slots = <PyObject**>oview.buf
        for i in range(k):
            reader_bytes_element(&r, &data, &size)  # validated by _count_elements
            item = PyBytes_FromStringAndSize(<const char*>data, size)
            Py_INCREF(item)
            old = slots[i]
            slots[i] = <PyObject*>item
            Py_DECREF(<object>old)
    finally:
        PyBuffer_Release(&oview)
    IF MESH_DEBUG:
        if r.pos != n:
            raise RuntimeError(f"fastpath invariant: BYTES walk ended at {r.pos}, not {n}")
    return out


# ----------------------------------------------------------------------------- datatypes

def numpy_dtype(str datatype) -> np.dtype:
    """The little-endian numpy dtype for a KServe datatype (BYTES -> object)."""
    dt = _DTYPES.get(datatype)
    if dt is None:
        raise CodecError(f"unknown datatype {datatype!r}")
    return dt


def datatype_of(arr) -> str:
    """The KServe datatype for a numpy array's dtype (object/bytes_/str_ -> BYTES)."""
    dt = arr.dtype
    if dt == _BF16 and dt.kind == "V":
        return "BF16"
    kind = dt.kind
    if kind == "O" or kind == "S" or kind == "U":
        return "BYTES"
    datatype = _KIND_SIZE_TO_DATATYPE.get((kind, dt.itemsize))
    if datatype is None:
        raise CodecError(f"tensor: no KServe datatype for numpy dtype {dt}")
    return datatype


def element_count(shape, str name="") -> int:
    """Number of elements of ``shape``; CodecError for negative or absurd dimensions."""
    return shape_count(shape, who_of("input", name), None)


# ----------------------------------------------------------------------------- BYTES

def decode_bytes(buf, Py_ssize_t count, str name="") -> np.ndarray:
    """Parse length-prefixed BYTES contents into a 1-D object array of ``bytes``.

    ``count`` is the exact number of elements expected, or -1 for "as many as there are".
    """
    cdef str who = who_of("input", name)
    cdef Py_buffer view
    if count < -1:
        raise CodecError(f"{who}: invalid BYTES element count {count}")
    get_buffer(buf, &view, who)
    try:
        return _decode_bytes_view(<const unsigned char*>view.buf, view.len, count, who)
    finally:
        PyBuffer_Release(&view)


cdef inline int _utf8_len(uint32_t cp) noexcept nogil:
    if cp < 0x80:
        return 1
    if cp < 0x800:
        return 2
    if cp < 0x10000:
        return 0 if 0xD800 <= cp <= 0xDFFF else 3
    if cp < 0x110000:
        return 4
    return 0


cdef inline unsigned char* _put_utf8(unsigned char* o, uint32_t cp) noexcept nogil:
    if cp < 0x80:
        o[0] = <unsigned char>cp
        return o + 1
    if cp < 0x800:
        o[0] = <unsigned char>(0xC0 | (cp >> 6))
        o[1] = <unsigned char>(0x80 | (cp & 0x3F))
        return o + 2
    if cp < 0x10000:
        o[0] = <unsigned char>(0xE0 | (cp >> 12))
        o[1] = <unsigned char>(0x80 | ((cp >> 6) & 0x3F))
        o[2] = <unsigned char>(0x80 | (cp & 0x3F))
        return o + 3
    o[0] = <unsigned char>(0xF0 | (cp >> 18))
    o[1] = <unsigned char>(0x80 | ((cp >> 12) & 0x3F))
    o[2] = <unsigned char>(0x80 | ((cp >> 6) & 0x3F))
    o[3] = <unsigned char>(0x80 | (cp & 0x3F))
    return o + 4


cdef inline void _put_u32le(unsigned char* o, uint32_t v) noexcept nogil:
    o[0] = <unsigned char>(v & 0xFF)
    o[1] = <unsigned char>((v >> 8) & 0xFF)
    o[2] = <unsigned char>((v >> 16) & 0xFF)
    o[3] = <unsigned char>((v >> 24) & 0xFF)


cdef bytes _encode_fixed_width_S(const unsigned char* base, Py_ssize_t n, Py_ssize_t width):
    """numpy ``S<width>`` contents -> BYTES (trailing NULs dropped, as numpy does)."""
    cdef Py_ssize_t count = n // width if width > 0 else 0
    cdef Py_ssize_t i, ln, total = 0
    cdef const unsigned char* p
    cdef unsigned char* o
    for i in range(count):
        p = base + i * width
        ln = width
        while ln > 0 and p[ln - 1] == 0:
            ln -= 1
        total += 4 + ln
    out = PyBytes_FromStringAndSize(NULL, total)
    o = <unsigned char*>PyBytes_AS_STRING(out)
    for i in range(count):
        p = base + i * width
        ln = width
        while ln > 0 and p[ln - 1] == 0:
            ln -= 1
        _put_u32le(o, <uint32_t>ln)
        memcpy(o + 4, p, ln)
        o += 4 + ln
    return out


cdef bytes _encode_fixed_width_U(const unsigned char* base, Py_ssize_t n, Py_ssize_t width):
    """numpy ``<U<width>`` (UCS-4) contents -> UTF-8 BYTES (trailing NULs dropped)."""
    cdef Py_ssize_t count = n // (4 * width) if width > 0 else 0
    cdef Py_ssize_t i, j, ln, elen, total = 0
    cdef const uint32_t* p
    cdef uint32_t cp
    cdef int cl
    cdef unsigned char* o
    for i in range(count):
        p = <const uint32_t*>(base + i * 4 * width)
        ln = width
        while ln > 0 and p[ln - 1] == 0:
            ln -= 1
        elen = 0
        for j in range(ln):
            cl = _utf8_len(p[j])
            if cl == 0:
                raise CodecError(f"tensor: BYTES element {i} is not encodable as UTF-8")
            elen += cl
        if elen > FP_U32_MAX:
            raise CodecError(
                f"tensor: BYTES element {i} is {elen} bytes, over the 4 GiB length-prefix limit"
            )
        total += 4 + elen
    out = PyBytes_FromStringAndSize(NULL, total)
    o = <unsigned char*>PyBytes_AS_STRING(out)
    for i in range(count):
        p = <const uint32_t*>(base + i * 4 * width)
        ln = width
        while ln > 0 and p[ln - 1] == 0:
            ln -= 1
        elen = 0
        for j in range(ln):
            elen += _utf8_len(p[j])
        _put_u32le(o, <uint32_t>elen)
        o += 4
        for j in range(ln):
            o = _put_utf8(o, p[j])
    IF MESH_DEBUG:
        if o != <unsigned char*>PyBytes_AS_STRING(out) + total:
            raise RuntimeError("fastpath invariant: UTF-8 BYTES size mismatch")
    return out


cdef inline Py_ssize_t _element_ptr(object x, Py_ssize_t i, const char** ptr) except -1:
    """Pointer/size of one BYTES element (bytes, bytearray or str as UTF-8)."""
    cdef Py_ssize_t n
    if PyBytes_Check(x):
        n = PyBytes_GET_SIZE(x)
        if n <= FP_U32_MAX:
            ptr[0] = PyBytes_AS_STRING(x)
            return n
    return _element_ptr_slow(x, i, ptr)


cdef Py_ssize_t _element_ptr_slow(object x, Py_ssize_t i, const char** ptr) except -1:
    cdef Py_ssize_t n
    if PyBytes_Check(x):
        ptr[0] = PyBytes_AS_STRING(x)
        n = PyBytes_GET_SIZE(x)
    elif PyUnicode_Check(x):
        try:
            ptr[0] = PyUnicode_AsUTF8AndSize(x, &n)
        except UnicodeEncodeError:
            raise CodecError(f"tensor: BYTES element {i} is not encodable as UTF-8") from None
    elif PyByteArray_Check(x):
        ptr[0] = PyByteArray_AS_STRING(x)
        n = PyByteArray_GET_SIZE(x)
    else:
        raise CodecError(f"tensor: BYTES element {i} must be bytes or str, got {type(x).__name__}")
    if n > FP_U32_MAX:
        raise CodecError(f"tensor: BYTES element {i} is {n} bytes, over the 4 GiB length-prefix limit")
    return n


cdef bytes _encode_items(object seq):
    """A list/tuple of bytes/bytearray/str -> BYTES, sized in one pass, filled in a second."""
    cdef Py_ssize_t count = PySequence_Fast_GET_SIZE(seq)
    cdef Py_ssize_t i, n, total = 0
    cdef const char* ptr
    cdef unsigned char* o
    for i in range(count):
        total += 4 + _element_ptr(<object>PySequence_Fast_GET_ITEM(seq, i), i, &ptr)
    out = PyBytes_FromStringAndSize(NULL, total)
    o = <unsigned char*>PyBytes_AS_STRING(out)
    for i in range(count):
        n = _element_ptr(<object>PySequence_Fast_GET_ITEM(seq, i), i, &ptr)
        _put_u32le(o, <uint32_t>n)
        memcpy(o + 4, ptr, n)
        o += 4 + n
    IF MESH_DEBUG:
        if o != <unsigned char*>PyBytes_AS_STRING(out) + total:
            raise RuntimeError("fastpath invariant: BYTES size mismatch")
    return out


def encode_bytes(values) -> bytes:
    """Length-prefix BYTES elements (bytes, bytearray, str as UTF-8, or a numpy
    object/bytes_/str_ array, flattened in row-major order)."""
    cdef Py_buffer view
    if isinstance(values, np.ndarray):
        kind = values.dtype.kind
        if kind == "O":
            return _encode_items(values.ravel().tolist())
        if kind == "S" or kind == "U":
            if values.dtype.byteorder == ">":
                values = values.astype(values.dtype.newbyteorder("<"))
            values = np.ascontiguousarray(values)
            PyObject_GetBuffer(values, &view, PyBUF_SIMPLE)
            try:
                if kind == "S":
                    return _encode_fixed_width_S(
                        <const unsigned char*>view.buf, view.len, values.dtype.itemsize
                    )
                return _encode_fixed_width_U(
                    <const unsigned char*>view.buf, view.len, values.dtype.itemsize // 4
                )
            finally:
                PyBuffer_Release(&view)
        raise CodecError(f"tensor: BYTES needs an object, bytes_ or str_ array, got dtype {values.dtype}")
    if PyList_CheckExact(values) or PyTuple_CheckExact(values):
        return _encode_items(values)
    if isinstance(values, (str, bytes, bytearray, memoryview)):
        raise CodecError(f"tensor: BYTES values must be a sequence of elements, got {type(values).__name__}")
    try:
        items = list(values)
    except TypeError:
        raise CodecError(
            f"tensor: BYTES values must be a sequence of elements, got {type(values).__name__}"
        ) from None
    return _encode_items(items)


# ----------------------------------------------------------------------------- tensors

def decode_tensor(buf, str datatype, shape, str name="") -> np.ndarray:
    """Raw tensor contents -> numpy array of ``shape``.

    Fixed-size datatypes: a read-only zero-copy view of ``buf`` after checking its size.
    BYTES: an object array of ``bytes``.
    """
    cdef str who = who_of("input", name)
    cdef Py_ssize_t itemsize = fixed_itemsize(datatype, who)
    cdef list dims = []
    cdef int64_t count = shape_count(shape, who, dims)
    cdef Py_buffer view
    cdef Py_ssize_t n
    get_buffer(buf, &view, who)
    try:
        n = view.len
        if itemsize == 0:
            arr = _decode_bytes_view(<const unsigned char*>view.buf, n, <Py_ssize_t>count, who)
            return arr.reshape(dims)
    finally:
        PyBuffer_Release(&view)
    if n != count * itemsize:
        raise CodecError(
            f"{who}: {datatype} shape {fmt_dims(dims)} needs {count * itemsize} bytes, got {n}"
        )
    arr = np.frombuffer(buf, dtype=<object>_DTYPES[datatype]).reshape(dims)
    arr.flags.writeable = False
    return arr


def encode_tensor(arr, datatype=None) -> bytes:
    """numpy array -> raw little-endian contents (BYTES: length-prefixed elements)."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"encode_tensor needs a numpy.ndarray, got {type(arr).__name__}")
    if datatype is None:
        datatype = datatype_of(arr)
    if datatype == "BYTES":
        if arr.dtype.kind not in "OSU":
            raise CodecError(f"tensor: BYTES needs an object, bytes_ or str_ array, got dtype {arr.dtype}")
        return encode_bytes(arr)
    expected = _DTYPES.get(datatype)
    if expected is None:
        raise CodecError(f"tensor: unknown datatype {datatype!r}")
    dt = arr.dtype
    if dt != expected and not (datatype == "BF16" and dt == _U2):
        if dt.byteorder != ">" or (
            dt.newbyteorder("<") != expected
            and not (datatype == "BF16" and dt.newbyteorder("<") == _U2)
        ):
            raise CodecError(f"tensor: {datatype} needs dtype {expected}, got {dt}")
        arr = arr.astype(dt.newbyteorder("<"))
    return arr.tobytes()


# ----------------------------------------------------------------------------- JSON (HTTP)

cdef int _flatten_strings(object data, list out, str who) except -1:
    if isinstance(data, str):
        out.append(data)
    elif isinstance(data, (bytes, bytearray)):
        out.append(data)
    elif isinstance(data, (list, tuple)):
        for item in data:
            _flatten_strings(item, out, who)
    else:
        raise CodecError(f"{who}: BYTES data items must be str or bytes, got {type(data).__name__}")
    return 0


cdef object _to_bf16_bits(object values):
    """float array -> bfloat16 bit patterns (round to nearest even; NaN stays quiet NaN)."""
    f32 = np.asarray(values, dtype=_F4).ravel()
    bits = f32.view(_U4).astype(np.uint64)
    rounded = ((bits + _BIAS + ((bits >> _SIXTEEN) & _ONE)) >> _SIXTEEN).astype(_U2)
    nan = np.isnan(f32)
    if nan.any():
        rounded[nan] = ((bits[nan] >> _SIXTEEN) | _QUIET).astype(_U2)
    return rounded


cdef object _python_ints(object data, object arr, str datatype, str who):
    cdef object flat
    if arr.dtype.kind in "fO":
        flat = np.asarray(data, dtype=_OBJECT).ravel()
        if all([isinstance(x, int) for x in flat.tolist()]):
            return flat
    raise CodecError(f"{who}: {datatype} data must be integers, got {arr.dtype}")


def json_to_raw(data, str datatype, shape, str name="") -> bytes:
    """v2 REST ``data`` (nested list, row-major) -> raw tensor contents."""
    cdef str who = who_of("input", name)
    cdef Py_ssize_t itemsize = fixed_itemsize(datatype, who)
    cdef list dims = []
    cdef int64_t count = shape_count(shape, who, dims)
    cdef list items
    if itemsize == 0:
        items = []
        _flatten_strings(data, items, who)
        if len(items) != count:
            raise CodecError(f"{who}: shape {fmt_dims(dims)} needs {count} elements, got {len(items)}")
        try:
            return _encode_items(items)
        except CodecError as exc:
            raise CodecError(f"{who}: {str(exc).partition(': ')[2]}") from None
    with np.errstate(all="ignore"):
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError, OverflowError):
            raise CodecError(f"{who}: {datatype} data is not a rectangular array of numbers") from None
        if arr.size != count:
            raise CodecError(f"{who}: shape {fmt_dims(dims)} needs {count} elements, got {arr.size}")
        target = _DTYPES[datatype]
        kind = arr.dtype.kind
        if count > 0:
            if datatype == "BOOL":
                if kind != "b":
                    raise CodecError(f"{who}: BOOL data must be booleans, got {arr.dtype}")
            elif datatype[0] in "UI":
                if kind != "i" and kind != "u":
                    # numpy infers float64 for e.g. [0, 2**63] and object for huge ints:
                    # look again at the original Python ints.
                    arr = _python_ints(data, arr, datatype, who)
                info = np.iinfo(target)
                if int(arr.min()) < info.min or int(arr.max()) > info.max:
                    raise CodecError(f"{who}: {datatype} data out of range [{info.min}, {info.max}]")
            elif kind not in "iuf":
                raise CodecError(f"{who}: {datatype} data must be numbers, got {arr.dtype}")
        if datatype == "BF16":
            return _to_bf16_bits(arr).tobytes()
        return arr.astype(target).tobytes()


def raw_to_json(buf, str datatype, shape, str name="") -> list:
    """Raw tensor contents -> FLAT list for a v2 REST response (BYTES -> str)."""
    cdef str who = who_of("output", name)
    cdef Py_ssize_t itemsize = fixed_itemsize(datatype, who)
    cdef list dims = []
    cdef int64_t count = shape_count(shape, who, dims)
    cdef Py_buffer view
    cdef Reader r
    cdef Py_ssize_t n, k, i, size
    cdef const unsigned char* data = NULL
    cdef list out
    get_buffer(buf, &view, who)
    try:
        n = view.len
        if itemsize == 0:
            reader_init(&r, <const unsigned char*>view.buf, n)
            k = _count_elements(&r, <Py_ssize_t>count, who)
            out = [None] * k
            for i in range(k):
                reader_bytes_element(&r, &data, &size)
                try:
                    out[i] = PyUnicode_DecodeUTF8(<const char*>data, size, NULL)
                except UnicodeDecodeError:
                    raise CodecError(
                        f"{who}: BYTES element {i} is not valid UTF-8; "
                        f"request this output with binary_data"
                    ) from None
            return out
    finally:
        PyBuffer_Release(&view)
    if n != count * itemsize:
        raise CodecError(
            f"{who}: {datatype} shape {fmt_dims(dims)} needs {count * itemsize} bytes, got {n}"
        )
    if datatype == "BF16":
        bits = np.frombuffer(buf, dtype=_U2)
        with np.errstate(all="ignore"):  # signalling NaNs are passed through, not warned about
            return (bits.astype(_U4) << 16).view(_F4).astype(_F8).tolist()
    arr = np.frombuffer(buf, dtype=<object>_DTYPES[datatype])
    if datatype == "FP16":
        with np.errstate(all="ignore"):
            return arr.astype(_F8).tolist()
    return arr.tolist()
