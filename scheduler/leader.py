"""Leader election on a store session lock (Consul's lock recipe)."""
from __future__ import annotations

import asyncio
import logging

from mesh.store import Store, StoreError
from mesh.types import KEYS

__all__ = ["Leadership"]

log = logging.getLogger(__name__)


class Leadership:
    """Holds ``mesh/leader/scheduler`` while it can; ``is_leader`` says whether it does."""

    def __init__(self, store: Store, identity: str, ttl_s: float = 10.0, lock_delay_s: float = 1.0) -> None:
        self.store = store
        self.identity = identity
        self.ttl_s = ttl_s
        self.lock_delay_s = lock_delay_s
        self.is_leader = False
        self.changed = asyncio.Event()
        self._session: str | None = None

    async def run(self) -> None:
        while True:
            try:
                if self._session is None:
                    self._session = await self.store.create_session(
                        f"scheduler {self.identity}", self.ttl_s, self.lock_delay_s)
                if not self.is_leader:
                    if await self.store.acquire(KEYS.LEADER, self.identity.encode(), self._session):
                        log.info("scheduler %s is now the leader", self.identity)
                        self._set(True)
                elif not await self.store.renew_session(self._session):
                    raise StoreError("leader session expired")
                if self.is_leader:
                    kv = await self.store.get(KEYS.LEADER)
                    if kv is None or kv.session != self._session:
                        raise StoreError("leader lock was taken away")
                    await self.store.renew_session(self._session)
            except StoreError as exc:
                if self.is_leader:
                    log.warning("scheduler %s lost leadership: %s", self.identity, exc)
                self._set(False)
                self._session = None
            await asyncio.sleep(self.ttl_s / 4 if self.is_leader else min(1.0, self.ttl_s / 4))

    async def resign(self) -> None:
        if self._session is not None:
            try:
                await self.store.release(KEYS.LEADER, self._session)
                await self.store.destroy_session(self._session)
            except StoreError:
                pass
        self._session = None
        self._set(False)

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            self.changed.set()
