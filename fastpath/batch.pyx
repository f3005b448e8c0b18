"""Dynamic batching helpers: merge per-request tensor contents along dim 0 and split a
batched output back into per-request pieces.

``merge_raw`` concatenates into one pre-sized ``bytes`` (fixed-size and length-prefixed
BYTES contents alike). ``split_raw`` returns zero-copy read-only memoryview slices; for
BYTES it walks the length prefixes (bounds-checked) to find each request's elements.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdint cimport int64_t
from libc.string cimport memcpy

from fastpath._reader cimport Reader, R_OK, reader_init, reader_left, reader_bytes_element
from fastpath.codec cimport (
    FP_MAX_ELEMENTS, index_as_int64, who_of, fmt_dims, shape_count, fixed_itemsize, get_buffer,
    raise_bytes_short,
)

from fastpath.errors import CodecError

__all__ = ["DEBUG", "merge_raw", "split_raw"]

IF MESH_DEBUG:
    DEBUG = True
ELSE:
    DEBUG = False

cdef extern from "Python.h":
    object PyNumber_Index(object o)
    object PyMemoryView_FromObject(object o)
    Py_buffer* PyMemoryView_GET_BUFFER(object mv)


cdef object _subview(object base, Py_ssize_t start, Py_ssize_t stop):
    """``base[start:stop]`` for a 1-D unsigned-byte memoryview, without building a slice
    object and two ints: a new view registered on ``base``'s managed buffer (so it keeps the
    exporter alive, exactly as slicing does) whose own buf/len/shape are then narrowed."""
    cdef object piece = PyMemoryView_FromObject(base)
    cdef Py_buffer* src = PyMemoryView_GET_BUFFER(base)
    cdef Py_buffer* dst = PyMemoryView_GET_BUFFER(piece)
    dst.buf = <char*>src.buf + start
    dst.len = stop - start
    dst.shape[0] = stop - start
    IF MESH_DEBUG:
        if dst.ndim != 1 or dst.itemsize != 1 or dst.strides[0] != 1 or not dst.readonly:
            raise RuntimeError("fastpath invariant: _subview needs a 1-D read-only byte view")
        if bytes(piece) != bytes(base[start:stop]):
            raise RuntimeError("fastpath invariant: _subview differs from slicing")
    return piece

# Above this many bytes the copy runs without the GIL.
cdef Py_ssize_t _NOGIL_BYTES = 1 << 16


cdef bytes concat_buffers(list parts):
    cdef Py_ssize_t count = len(parts)
    cdef Py_ssize_t acquired = 0
    cdef Py_ssize_t i, total = 0
    cdef Py_buffer* views
    cdef char* o
    if count == 0:
        return b""
    views = <Py_buffer*>PyMem_Malloc(count * sizeof(Py_buffer))
    if views == NULL:
        raise MemoryError()
    try:
        for i in range(count):
            PyObject_GetBuffer(parts[i], &views[i], PyBUF_SIMPLE)
            acquired += 1
            total += views[i].len
        out = PyBytes_FromStringAndSize(NULL, total)
        o = PyBytes_AS_STRING(out)
        if total >= _NOGIL_BYTES:
            with nogil:
                for i in range(count):
                    memcpy(o, views[i].buf, views[i].len)
                    o += views[i].len
        else:
            for i in range(count):
                memcpy(o, views[i].buf, views[i].len)
                o += views[i].len
        IF MESH_DEBUG:
            if o != PyBytes_AS_STRING(out) + total:
                raise RuntimeError("fastpath invariant: merge_raw size mismatch")
        return out
    finally:
        for i in range(acquired):
            PyBuffer_Release(&views[i])
        PyMem_Free(views)


def merge_raw(parts) -> bytes:
    """Concatenate per-request raw contents (bytes-like, C-contiguous) into one buffer."""
    return concat_buffers(parts if type(parts) is list else list(parts))


def split_raw(buf, str datatype, batch_sizes, shape_tail, str name="") -> list:
    """Split a batched output's raw contents into per-request read-only memoryviews.

    Request ``i`` owns ``batch_sizes[i] * prod(shape_tail)`` elements; together they must
    cover ``buf`` exactly.
    """
    cdef str who = who_of("output", name)
    cdef Py_ssize_t itemsize = fixed_itemsize(datatype, who)
    cdef int64_t tail = shape_count(shape_tail, who, None)
    cdef tuple sizes = tuple(batch_sizes)
    cdef Py_ssize_t npieces = len(sizes)
    cdef int64_t bs, piece, total = 0
    cdef int64_t* counts
    cdef Py_buffer view
    cdef Reader r
    cdef Py_ssize_t i, j, k, n, size, start
    cdef const unsigned char* data = NULL
    cdef list out = []
    counts = <int64_t*>PyMem_Malloc((npieces + 1) * sizeof(int64_t))
    if counts == NULL:
        raise MemoryError()
    try:
        for i in range(npieces):
            try:
                v = PyNumber_Index(sizes[i])
            except TypeError:
                raise CodecError(f"{who}: batch sizes {fmt_dims(sizes)} must be integers") from None
            bs = index_as_int64(v)
            if bs < 0:
                raise CodecError(f"{who}: negative batch size {v} in {fmt_dims(sizes)}")
            if bs > 0 and tail > FP_MAX_ELEMENTS // bs:
                piece = FP_MAX_ELEMENTS + 1
            else:
                piece = bs * tail
            total += piece
            if piece > FP_MAX_ELEMENTS or total > FP_MAX_ELEMENTS:
                raise CodecError(
                    f"{who}: batch sizes {fmt_dims(sizes)} x shape tail {fmt_dims(shape_tail)} "
                    f"is absurd (more than 2**40 elements)"
                )
            counts[i] = piece
        mv = memoryview(buf)
        if not mv.c_contiguous:
            raise CodecError(f"{who}: buffer is not C-contiguous")
        if mv.ndim != 1 or mv.itemsize != 1 or mv.format != "B":
            mv = mv.cast("B")
        mv = mv.toreadonly()
        get_buffer(mv, &view, who)
        try:
            n = view.len
            if itemsize > 0:
                if n != total * itemsize:
                    raise CodecError(
                        f"{who}: {datatype} batch sizes {fmt_dims(sizes)} x shape tail "
                        f"{fmt_dims(shape_tail)} need {total * itemsize} bytes, got {n}"
                    )
                start = 0
                for i in range(npieces):
                    out.append(_subview(mv, start, start + counts[i] * itemsize))
                    start += counts[i] * itemsize
                return out
            reader_init(&r, <const unsigned char*>view.buf, n)
            k = 0
            for i in range(npieces):
                start = r.pos
                for j in range(counts[i]):
                    if reader_left(&r) == 0:
                        raise CodecError(f"{who}: BYTES needs {total} elements, got {k}")
                    if reader_bytes_element(&r, &data, &size) != R_OK:
                        raise_bytes_short(who, k, &r, size)
                    k += 1
                out.append(_subview(mv, start, r.pos))
            if reader_left(&r) != 0:
                raise CodecError(
                    f"{who}: BYTES holds more than {total} elements "
                    f"({reader_left(&r)} trailing bytes at byte {r.pos})"
                )
            return out
        finally:
            PyBuffer_Release(&view)
    finally:
        PyMem_Free(counts)
