"""Type stubs for the compiled fastpath.wire extension."""
from typing import Final

from typing_extensions import Buffer

__all__ = ["DEBUG", "scan_fields", "scan_model"]

DEBUG: Final[bool]

def scan_model(buf: Buffer) -> tuple[str, str]: ...
def scan_fields(buf: Buffer) -> list[tuple[int, int, int, int]]: ...
