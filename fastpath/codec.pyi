"""Type stubs for the compiled fastpath.codec extension."""
from collections.abc import Iterable
from typing import Any, Final, SupportsIndex

import numpy as np
from numpy.typing import NDArray
from typing_extensions import Buffer

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

DEBUG: Final[bool]
DATATYPE_SIZES: dict[str, int]

def numpy_dtype(datatype: str) -> np.dtype[Any]: ...
def datatype_of(arr: NDArray[Any]) -> str: ...
def element_count(shape: Iterable[SupportsIndex], name: str = "") -> int: ...
def decode_bytes(buf: Buffer, count: int, name: str = "") -> NDArray[np.object_]: ...
def encode_bytes(values: NDArray[Any] | Iterable[bytes | bytearray | str]) -> bytes: ...
def decode_tensor(
    buf: Buffer, datatype: str, shape: Iterable[SupportsIndex], name: str = ""
) -> NDArray[Any]: ...
def encode_tensor(arr: NDArray[Any], datatype: str | None = None) -> bytes: ...
def json_to_raw(data: Any, datatype: str, shape: Iterable[SupportsIndex], name: str = "") -> bytes: ...
def raw_to_json(
    buf: Buffer, datatype: str, shape: Iterable[SupportsIndex], name: str = ""
) -> list[Any]: ...
