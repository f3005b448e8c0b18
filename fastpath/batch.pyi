"""Type stubs for the compiled fastpath.batch extension."""
from collections.abc import Iterable, Sequence
from typing import Final, SupportsIndex

from typing_extensions import Buffer

__all__ = ["DEBUG", "merge_raw", "split_raw"]

DEBUG: Final[bool]

def merge_raw(parts: Iterable[Buffer]) -> bytes: ...
def split_raw(
    buf: Buffer,
    datatype: str,
    batch_sizes: Sequence[SupportsIndex],
    shape_tail: Iterable[SupportsIndex],
    name: str = "",
) -> list[memoryview]: ...
