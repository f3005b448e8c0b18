# Declarations of the KServe v2 tensor codec, shared with batch.pyx.
from libc.stdint cimport int64_t
from cpython.buffer cimport Py_buffer

from fastpath._reader cimport Reader

cdef extern from *:
    """
    /* Largest element count (and largest single dimension) a shape may describe: 2**40. */
    #define FP_MAX_ELEMENTS ((int64_t)1 << 40)
    """
    const int64_t FP_MAX_ELEMENTS

cdef str who_of(str kind, str name)
cdef str fmt_dims(object dims)
cdef int64_t index_as_int64(object v) except? -2
cdef int64_t shape_count(object shape, str who, list dims_out) except -1
cdef Py_ssize_t fixed_itemsize(str datatype, str who) except -1
cdef int get_buffer(object buf, Py_buffer* view, str who) except -1
cdef int raise_bytes_short(str who, Py_ssize_t index, Reader* r, Py_ssize_t declared) except -1
