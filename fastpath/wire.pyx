"""Protobuf wire-format scanner for ``inference.ModelInferRequest``.

The gateway routes a gRPC ModelInfer call by model name and version without parsing the
(possibly huge) message: ``scan_model`` walks the top-level fields, skipping each by its
wire type, and decodes only fields 1 (model_name) and 2 (model_version). Every read is
bounds-checked; malformed bytes raise ``WireError``. No nested message is parsed.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint64_t

from fastpath._reader cimport (
    FP_U32_MAX, Reader, R_OK, R_SHORT, reader_init, reader_left, reader_take, reader_varint,
)

from fastpath.errors import WireError

__all__ = ["DEBUG", "scan_fields", "scan_model"]

IF MESH_DEBUG:
    DEBUG = True
ELSE:
    DEBUG = False

cdef str _MSG = "ModelInferRequest"


cdef int _varint_error(Reader* r, int status, str what) except -1:
    if status == R_SHORT:
        raise WireError(f"{_MSG}: truncated {what} varint at byte {r.pos}")
    raise WireError(f"{_MSG}: {what} varint longer than 10 bytes at byte {r.pos}")


cdef int next_field(Reader* r, unsigned int* field, int* wire_type,
                    Py_ssize_t* start, Py_ssize_t* end) except -1:
    cdef uint64_t tag = 0, length = 0
    cdef Py_ssize_t at = r.pos
    cdef int status
    cdef int size
    if reader_left(r) == 0:
        return 0
    status = reader_varint(r, &tag)
    if status != R_OK:
        _varint_error(r, status, "tag")
    if tag > <uint64_t>FP_U32_MAX:
        raise WireError(f"{_MSG}: tag {tag} out of range at byte {at}")
    field[0] = <unsigned int>(tag >> 3)
    wire_type[0] = <int>(tag & 7)
    if field[0] == 0:
        raise WireError(f"{_MSG}: invalid field number 0 at byte {at}")
    if wire_type[0] == 0:
        start[0] = r.pos
        status = reader_varint(r, &length)
        if status != R_OK:
            _varint_error(r, status, f"field {field[0]}")
        end[0] = r.pos
        return 1
    if wire_type[0] == 2:
        status = reader_varint(r, &length)
        if status != R_OK:
            _varint_error(r, status, f"field {field[0]} length")
        if length > <uint64_t>reader_left(r):
            raise WireError(
                f"{_MSG}: field {field[0]} length {length} at byte {at} runs past the end "
                f"({reader_left(r)} bytes left)"
            )
        start[0] = r.pos
        reader_take(r, <Py_ssize_t>length)
        end[0] = r.pos
        return 1
    if wire_type[0] == 1 or wire_type[0] == 5:
        size = 8 if wire_type[0] == 1 else 4
        start[0] = r.pos
        if reader_take(r, size) == NULL:
            raise WireError(
                f"{_MSG}: field {field[0]} fixed{size * 8} truncated at byte {r.pos} "
                f"({reader_left(r)} bytes left)"
            )
        end[0] = r.pos
        return 1
    if wire_type[0] == 3 or wire_type[0] == 4:
        raise WireError(f"{_MSG}: field {field[0]} uses group wire type {wire_type[0]} at byte {at}")
    raise WireError(f"{_MSG}: field {field[0]} has invalid wire type {wire_type[0]} at byte {at}")


cdef int _acquire(object buf, Py_buffer* view) except -1:
    try:
        PyObject_GetBuffer(buf, view, PyBUF_SIMPLE)
    except (BufferError, ValueError):
        raise WireError(f"{_MSG}: buffer is not C-contiguous") from None
    return 0


def scan_model(buf) -> tuple:
    """(model_name, model_version) of a serialized ModelInferRequest; "" when absent.

    The last occurrence of each field wins (protobuf semantics); a field with the wrong
    wire type is skipped like an unknown field.
    """
    cdef Py_buffer view
    cdef Reader r
    cdef unsigned int field
    cdef int wire_type
    cdef Py_ssize_t start, end
    cdef str name = ""
    cdef str version = ""
    _acquire(buf, &view)
    try:
        reader_init(&r, <const unsigned char*>view.buf, view.len)
        while next_field(&r, &field, &wire_type, &start, &end):
            if wire_type == 2 and (field == 1 or field == 2):
                try:
                    value = PyUnicode_DecodeUTF8(<const char*>r.buf + start, end - start, NULL)
                except UnicodeDecodeError:
                    raise WireError(
                        f"{_MSG}: field {'model_name' if field == 1 else 'model_version'} "
                        f"is not valid UTF-8"
                    ) from None
                if field == 1:
                    name = value
                else:
                    version = value
        IF MESH_DEBUG:
            if r.pos != r.end:
                raise RuntimeError(f"fastpath invariant: scan ended at {r.pos}, not {r.end}")
    finally:
        PyBuffer_Release(&view)
    return name, version


def scan_fields(buf) -> list:
    """Every top-level field as (field number, wire type, start, end), where [start, end)
    is the payload: the varint's bytes, the fixed32/64 bytes, or a length-delimited
    field's contents (after its length prefix)."""
    cdef Py_buffer view
    cdef Reader r
    cdef unsigned int field
    cdef int wire_type
    cdef Py_ssize_t start, end
    cdef list out = []
    _acquire(buf, &view)
    try:
        reader_init(&r, <const unsigned char*>view.buf, view.len)
        while next_field(&r, &field, &wire_type, &start, &end):
            out.append((field, wire_type, start, end))
    finally:
        PyBuffer_Release(&view)
    return out
