"""Leader election on a store session lock (Consul's lock recipe).

Each scheduler registers itself as a ``mesh-scheduler`` service with a short TTL
check that it feeds, and ties its session to that check: when a leader dies, its
check goes critical within ``check_ttl_s``, the session ends, the lock is released,
and after the lock delay a follower takes it. The session TTL (Consul's minimum is
10 s, and it may wait up to twice that) is only the backstop.
"""
from __future__ import annotations

import asyncio
import logging
import time

from mesh.store import ServiceRegistration, Store, StoreError
from mesh.types import KEYS

__all__ = ["Leadership", "SCHEDULER_SERVICE"]

log = logging.getLogger(__name__)
SCHEDULER_SERVICE = "mesh-scheduler"


class Leadership:
    """Holds ``mesh/leader/scheduler`` while it can; ``is_leader`` says whether it does."""

    def __init__(self, store: Store, identity: str, ttl_s: float = 10.0, lock_delay_s: float = 1.0,
                 check_ttl_s: float = 3.0, address: str = "", port: int = 0) -> None:
        self.store = store
        self.identity = identity
        self.ttl_s = ttl_s
        self.lock_delay_s = lock_delay_s
        self.check_ttl_s = check_ttl_s
        self.address, self.port = address, port
        self.is_leader = False
        self.changed = asyncio.Event()
        self._session: str | None = None
        self._registered = False

    async def run(self) -> None:
        tick = min(1.0, self.check_ttl_s / 3)
        last_renew = 0.0
        while True:
            try:
                if not self._registered:
                    await self.store.register_service(ServiceRegistration(
                        service_id=self.identity, name=SCHEDULER_SERVICE, address=self.address, port=self.port,
                        ttl_s=self.check_ttl_s, deregister_critical_after_s=60.0))
                    self._registered = True
                await self.store.pass_ttl(self.identity, "scheduler alive")
                if self._session is None:
                    self._session = await self.store.create_session(
                        f"scheduler {self.identity}", self.ttl_s, self.lock_delay_s, health_service_id=self.identity)
                    last_renew = time.monotonic()
                if not self.is_leader:
                    if await self.store.acquire(KEYS.LEADER, self.identity.encode(), self._session):
                        log.info("scheduler %s is now the leader", self.identity)
                        self._set(True)
                else:
                    kv = await self.store.get(KEYS.LEADER)
                    if kv is None or kv.session != self._session:
                        raise StoreError("leader lock was taken away (session ended?)")
                if time.monotonic() - last_renew > self.ttl_s / 3:
                    if not await self.store.renew_session(self._session):
                        raise StoreError("session expired")
                    last_renew = time.monotonic()
            except StoreError as exc:
                if self.is_leader:
                    log.warning("scheduler %s lost leadership: %s", self.identity, exc)
                else:
                    log.debug("scheduler %s: %s", self.identity, exc)
                self._set(False)
                self._session = None
                self._registered = False  # the store may have lost us (restart): register again
            await asyncio.sleep(tick)

    async def resign(self) -> None:
        if self._session is not None:
            try:
                await self.store.release(KEYS.LEADER, self._session)
                await self.store.destroy_session(self._session)
            except StoreError:
                pass
        try:
            await self.store.deregister_service(self.identity)
        except StoreError:
            pass
        self._session = None
        self._set(False)

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            self.changed.set()
