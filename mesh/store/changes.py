"""Wait for "something changed" across a KV prefix and a service's health.

Both blocking queries stay armed until they answer: a timeout or the other
query's answer does not cancel them. A cancelled Consul query still holds a pool
thread until Consul answers, and a cancel racing an answer can be lost.
"""
from __future__ import annotations

import asyncio

from mesh.store.base import Store, StoreError

__all__ = ["ChangeWatcher"]


class ChangeWatcher:
    def __init__(self, store: Store, prefix: str, service: str, query_timeout_s: float) -> None:
        self.store, self.prefix, self.service, self.query_timeout_s = store, prefix, service, query_timeout_s
        self.kv_index = 0
        self.svc_index = 0
        self._kv: tuple[int, asyncio.Future] | None = None    # type: ignore[type-arg]
        self._svc: tuple[int, asyncio.Future] | None = None   # type: ignore[type-arg]

    async def wait(self, timeout: float | None = None) -> bool:
        """True when the prefix or the service's health changed; False on timeout."""
        if self._kv is None or self._kv[0] != self.kv_index:
            self._drop(self._kv)
            self._kv = (self.kv_index, asyncio.ensure_future(
                self.store.watch(self.prefix, self.kv_index, self.query_timeout_s)))
        if self._svc is None or self._svc[0] != self.svc_index:
            self._drop(self._svc)
            self._svc = (self.svc_index, asyncio.ensure_future(
                self.store.services(self.service, index=self.svc_index or 1, timeout=self.query_timeout_s)))
        kv_task, svc_task = self._kv[1], self._svc[1]
        done, _ = await asyncio.wait({kv_task, svc_task}, return_when=asyncio.FIRST_COMPLETED, timeout=timeout)
        changed = False
        try:
            if kv_task in done:
                self._kv = None
                index = kv_task.result()[0]
                changed |= index != self.kv_index
                self.kv_index = index
            if svc_task in done:
                self._svc = None
                index = svc_task.result()[0]
                changed |= index != self.svc_index
                self.svc_index = index
        except StoreError:
            self.reset()
            raise
        return changed

    def reset(self) -> None:
        """Forget the indexes (after a store error) and drop the armed queries."""
        self._drop(self._kv)
        self._drop(self._svc)
        self._kv = self._svc = None
        self.kv_index = self.svc_index = 0

    @staticmethod
    def _drop(watch: tuple[int, asyncio.Future] | None) -> None:  # type: ignore[type-arg]
        if watch is not None:
            watch[1].cancel()
            watch[1].add_done_callback(_consume)


def _consume(fut: asyncio.Future) -> None:  # type: ignore[type-arg]
    """Retrieve a dropped query's outcome so asyncio does not log it as never retrieved."""
    if not fut.cancelled():
        fut.exception()
