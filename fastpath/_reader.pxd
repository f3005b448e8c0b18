# A bounds-checked cursor over a contiguous byte buffer, shared by codec, batch and wire.
#
# ``reader_take`` is the ONE place where a read is checked against the end of the buffer:
# every other helper here, and every caller, reads bytes only through it. The helpers never
# raise (they run without the GIL); they return a status code and the caller raises an error
# that names the tensor or message and the offset.

from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef extern from *:
    """
    /* Largest BYTES element a 4-byte length prefix can describe (as a C constant, so that
       comparisons with it stay in C rather than becoming Python int comparisons). */
    #define FP_U32_MAX ((int64_t)0xFFFFFFFFu)
    """
    const long long FP_U32_MAX

cdef struct Reader:
    const unsigned char* buf
    Py_ssize_t pos
    Py_ssize_t end

# status codes
cdef enum:
    R_OK = 0
    R_SHORT = 1        # fewer bytes left than asked for
    R_VARINT_LONG = 2  # varint did not end within 10 bytes


cdef inline void reader_init(Reader* r, const unsigned char* buf, Py_ssize_t n) noexcept nogil:
    r.buf = buf
    r.pos = 0
    r.end = n


cdef inline Py_ssize_t reader_left(const Reader* r) noexcept nogil:
    return r.end - r.pos


cdef inline const unsigned char* reader_take(Reader* r, Py_ssize_t n) noexcept nogil:
    """Consume ``n`` bytes and return a pointer to them, or NULL (nothing consumed) if the
    buffer holds fewer than ``n`` more bytes or ``n`` is negative."""
    cdef const unsigned char* p
    if n < 0 or n > r.end - r.pos:
        return NULL
    p = r.buf + r.pos
    r.pos += n
    return p


cdef inline int reader_u32le(Reader* r, uint32_t* out) noexcept nogil:
    cdef const unsigned char* p = reader_take(r, 4)
    if p == NULL:
        return R_SHORT
    out[0] = (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)
    return R_OK


cdef inline int reader_bytes_element(Reader* r, const unsigned char** data, Py_ssize_t* size) noexcept nogil:
    """Read one KServe BYTES element (4-byte little-endian length, then that many bytes).

    On R_SHORT, ``size`` holds the declared length if the prefix itself was complete, or -1
    if the prefix was truncated; ``r.pos`` then points at the prefix start (nothing consumed).
    """
    cdef Py_ssize_t start = r.pos
    cdef uint32_t n
    if reader_u32le(r, &n) != R_OK:
        size[0] = -1
        return R_SHORT
    size[0] = <Py_ssize_t>n
    data[0] = reader_take(r, <Py_ssize_t>n)
    if data[0] == NULL:
        r.pos = start
        return R_SHORT
    return R_OK


cdef inline int reader_varint(Reader* r, uint64_t* out) noexcept nogil:
    """Read a base-128 varint (at most 10 bytes; bits beyond 64 are dropped).

    On failure ``r.pos`` is left where the varint started.
    """
    cdef Py_ssize_t start = r.pos
    cdef uint64_t value = 0
    cdef const unsigned char* p
    cdef int i
    for i in range(10):
        p = reader_take(r, 1)
        if p == NULL:
            r.pos = start
            return R_SHORT
        value |= (<uint64_t>(p[0] & 0x7F)) << (7 * i)
        if not (p[0] & 0x80):
            out[0] = value
            return R_OK
    r.pos = start
    return R_VARINT_LONG
