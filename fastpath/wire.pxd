# Declarations of the protobuf wire scanner (top-level fields of ModelInferRequest).
from fastpath._reader cimport Reader

# Scan the next top-level field of ``r``: fills field number, wire type and the payload's
# [start, end) byte range, advancing past it. Returns 1 when a field was read, 0 at the end.
cdef int next_field(Reader* r, unsigned int* field, int* wire_type,
                    Py_ssize_t* start, Py_ssize_t* end) except -1
