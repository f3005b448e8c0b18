# Declarations of gateway-side dynamic batching helpers (merge along dim 0, split back).
from cpython.buffer cimport Py_buffer

cdef bytes concat_buffers(list parts)
