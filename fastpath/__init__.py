"""fastpath: compiled (Cython) tensor codecs, protobuf scanning and batching helpers for the
gateway's hot path. See README.md in this folder.

Importing this package imports the compiled extension modules; if they have not been built
(``python setup.py build_ext --inplace``) the import fails loudly rather than falling back to
the slow pure-Python twins in ``fastpath.reference`` (which exist for tests only).
"""
from __future__ import annotations

try:
    from fastpath.batch import merge_raw, split_raw
    from fastpath.codec import (
        DATATYPE_SIZES,
        datatype_of,
        decode_bytes,
        decode_tensor,
        element_count,
        encode_bytes,
        encode_tensor,
        json_to_raw,
        numpy_dtype,
        raw_to_json,
    )
    from fastpath.wire import scan_fields, scan_model
except ImportError as exc:  # not built: fail loudly, never fall back to fastpath.reference
    raise ImportError(
        "fastpath's compiled extensions are missing or broken; build them with "
        "`python setup.py build_ext --inplace` (or pip install the project)"
    ) from exc
from fastpath.errors import CodecError, WireError

__all__ = [
    "DATATYPE_SIZES",
    "CodecError",
    "WireError",
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
