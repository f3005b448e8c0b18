"""Store interface and backends. ``open_store(url)`` picks one from a URL."""
from __future__ import annotations

from mesh.store.base import KV, ServiceInstance, ServiceRegistration, Store, StoreError, StoreUnavailable
from mesh.store.memory import MemoryStore

__all__ = [
    "KV", "ServiceInstance", "ServiceRegistration", "Store", "StoreError", "StoreUnavailable",
    "MemoryStore", "open_store",
]


def open_store(url: str, token: str | None = None) -> Store:
    """``memory://`` (default, single process) or ``consul://HOST:PORT`` / ``consuls://`` (TLS)."""
    if url in ("", "memory", "memory://"):
        return MemoryStore()
    if url.startswith(("consul://", "consuls://")):
        from mesh.store.consul import ConsulStore  # py-consul only when asked for

        return ConsulStore.from_url(url, token=token)
    raise StoreError(f"unknown store URL {url!r}: use memory:// or consul://HOST:PORT")
