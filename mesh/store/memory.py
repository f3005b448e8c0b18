"""In-memory Store for the single-process mode, with Consul's semantics.

Everything lives in one asyncio event loop; waiters block on a Condition that is
notified on every change. TTL health, HTTP checks, critical-service reaping and
session expiry are driven by one background task.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from mesh.store.base import KV, ServiceInstance, ServiceRegistration, Store, StoreError

__all__ = ["MemoryStore"]

log = logging.getLogger(__name__)
_TICK_S = 0.2


@dataclass
class _Service:
    reg: ServiceRegistration
    ttl_deadline: float
    ttl_status: str = "passing"
    http_status: str = "passing"
    critical_since: float | None = None

    @property
    def status(self) -> str:
        if "critical" in (self.ttl_status, self.http_status):
            return "critical"
        return "passing"


@dataclass
class _Session:
    name: str
    ttl_s: float
    lock_delay_s: float
    deadline: float
    keys: set[str] = field(default_factory=set)
    service_id: str | None = None   # session ends when this service goes critical


class MemoryStore(Store):
    def __init__(self) -> None:
        self._index = 1
        self._kv: dict[str, KV] = {}
        # (index, key) of every KV change, deletes included; trimmed lazily.
        self._changes: list[tuple[int, str]] = []
        self._services: dict[str, _Service] = {}
        self._services_index = 1
        self._sessions: dict[str, _Session] = {}
        self._lock_delay_until: dict[str, float] = {}
        # Replaced on every change: waiters hold the current one and wake when it is set.
        self._changed: asyncio.Event | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._http: object | None = None
        self._http_tasks: dict[str, asyncio.Task[None]] = {}

    # -- plumbing ----------------------------------------------------------
    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        return self._changed

    async def _notify(self) -> None:
        event = self._event()
        self._changed = asyncio.Event()
        event.set()

    async def _wait_change(self, deadline: float) -> bool:
        """Wait for the next change; False once the deadline has passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that races the event
        # (the caller's cancelled watch then runs on to its deadline and stalls the caller).
        waiter = asyncio.ensure_future(self._event().wait())
        try:
            done, _ = await asyncio.wait({waiter}, timeout=remaining)
        finally:
            waiter.cancel()
        return bool(done)

    def _bump(self) -> int:
        self._index += 1
        return self._index

    async def _record(self, key: str, index: int) -> None:
        self._changes.append((index, key))
        if len(self._changes) > 100_000:
            del self._changes[:50_000]
        await self._notify()

    def _changed_since(self, prefix: str, index: int) -> bool:
        if self._changes and self._changes[0][0] > index + 1 and index > 0:
            return True  # log trimmed past the caller's index: assume a change
        for idx, key in reversed(self._changes):
            if idx <= index:
                return False
            if key.startswith(prefix):
                return True
        return False

    # -- key/value -----------------------------------------------------------
    async def get(self, key: str) -> KV | None:
        self._event()
        return self._kv.get(key)

    async def list(self, prefix: str) -> tuple[int, list[KV]]:
        self._event()
        items = [kv for k, kv in sorted(self._kv.items()) if k.startswith(prefix)]
        return self._index, items

    async def put(self, key: str, value: bytes, *, cas: int | None = None) -> bool:
        self._event()
        if not isinstance(value, (bytes, bytearray)):
            raise StoreError(f"value for {key!r} must be bytes, got {type(value).__name__}")
        old = self._kv.get(key)
        if cas is not None:
            current = old.modify_index if old else 0
            if current != cas:
                return False
        idx = self._bump()
        self._kv[key] = KV(
            key, bytes(value), idx, old.create_index if old else idx, old.session if old else None
        )
        await self._record(key, idx)
        return True

    async def delete(self, key: str, *, cas: int | None = None) -> bool:
        self._event()
        old = self._kv.get(key)
        if cas is not None and old is not None and old.modify_index != cas:
            return False
        if old is None:
            return True
        del self._kv[key]
        await self._record(key, self._bump())
        return True

    async def delete_prefix(self, prefix: str) -> None:
        self._event()
        keys = [k for k in self._kv if k.startswith(prefix)]
        if not keys:
            return
        idx = self._bump()
        for k in keys:
            del self._kv[k]
            self._changes.append((idx, k))
        await self._notify()

    async def watch(self, prefix: str, index: int, timeout: float) -> tuple[int, list[KV]]:
        self._event()
        deadline = time.monotonic() + timeout
        while not self._changed_since(prefix, index):
            if not await self._wait_change(deadline):
                break
        return await self.list(prefix)

    # -- services --------------------------------------------------------------
    async def register_service(self, reg: ServiceRegistration) -> None:
        self._event()
        now = time.monotonic()
        # Like Consul, a (re-)registered TTL check starts critical until first pass.
        svc = _Service(reg, ttl_deadline=now, ttl_status="critical", critical_since=now)
        old = self._services.get(reg.service_id)
        if old is not None:
            svc.ttl_status, svc.ttl_deadline, svc.critical_since = (
                old.ttl_status, old.ttl_deadline, old.critical_since)
        self._services[reg.service_id] = svc
        self._start_http_check(reg)
        await self._services_changed()

    async def deregister_service(self, service_id: str) -> None:
        self._event()
        if self._services.pop(service_id, None) is not None:
            task = self._http_tasks.pop(service_id, None)
            if task:
                task.cancel()
            await self._services_changed()

    async def pass_ttl(self, service_id: str, note: str = "") -> None:
        await self._set_ttl(service_id, "passing")

    async def fail_ttl(self, service_id: str, note: str = "") -> None:
        await self._set_ttl(service_id, "critical")

    async def _set_ttl(self, service_id: str, status: str) -> None:
        self._event()
        svc = self._services.get(service_id)
        if svc is None:
            raise StoreError(f"no service {service_id!r} is registered; register it first")
        before = svc.status
        svc.ttl_status = status
        if status == "passing":
            svc.ttl_deadline = time.monotonic() + svc.reg.ttl_s
        await self._after_status(svc, before)

    async def _after_status(self, svc: _Service, before: str) -> None:
        if svc.status != before:
            svc.critical_since = time.monotonic() if svc.status == "critical" else None
            await self._services_changed()

    async def _services_changed(self) -> None:
        self._services_index = self._bump()
        await self._notify()

    async def services(
        self, name: str, *, passing_only: bool = False, index: int = 0, timeout: float = 0.0
    ) -> tuple[int, list[ServiceInstance]]:
        self._event()
        if index > 0 and timeout > 0:
            deadline = time.monotonic() + timeout
            while self._services_index <= index:
                if not await self._wait_change(deadline):
                    break
        out = [
            ServiceInstance(s.reg.service_id, s.reg.name, s.reg.address, s.reg.port,
                            dict(s.reg.meta), s.status)
            for s in self._services.values()
            if s.reg.name == name and (not passing_only or s.status == "passing")
        ]
        out.sort(key=lambda i: i.service_id)
        return self._services_index, out

    def _start_http_check(self, reg: ServiceRegistration) -> None:
        old = self._http_tasks.pop(reg.service_id, None)
        if old:
            old.cancel()
        if reg.http_check_url:
            self._http_tasks[reg.service_id] = asyncio.get_running_loop().create_task(
                self._http_check(reg.service_id, reg.http_check_url, reg.http_check_interval_s))

    async def _http_check(self, service_id: str, url: str, interval: float) -> None:
        import aiohttp  # local: only the HTTP check needs it

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=interval)) as http:
            while service_id in self._services:
                try:
                    async with http.get(url) as resp:
                        status = "passing" if resp.status == 200 else "critical"
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    status = "critical"
                svc = self._services.get(service_id)
                if svc is None:
                    return
                before = svc.status
                svc.http_status = status
                await self._after_status(svc, before)
                await asyncio.sleep(interval)

    # -- sessions ------------------------------------------------------------
    async def create_session(self, name: str, ttl_s: float, lock_delay_s: float,
                             health_service_id: str | None = None) -> str:
        self._event()
        if health_service_id is not None:
            svc = self._services.get(health_service_id)
            if svc is None or svc.status != "passing":
                raise StoreError(f"cannot tie session {name!r} to service {health_service_id!r}: "
                                 "it is not registered and passing")
        sid = str(uuid.uuid4())
        self._sessions[sid] = _Session(name, ttl_s, lock_delay_s, time.monotonic() + ttl_s,
                                       service_id=health_service_id)
        return sid

    async def renew_session(self, session_id: str) -> bool:
        sess = self._sessions.get(session_id)
        if sess is None:
            return False
        sess.deadline = time.monotonic() + sess.ttl_s
        return True

    async def destroy_session(self, session_id: str) -> None:
        sess = self._sessions.pop(session_id, None)
        if sess is None:
            return
        now = time.monotonic()
        for key in sess.keys:
            kv = self._kv.get(key)
            if kv is not None and kv.session == session_id:
                idx = self._bump()
                self._kv[key] = KV(key, kv.value, idx, kv.create_index, None)
                self._lock_delay_until[key] = now + sess.lock_delay_s
                self._changes.append((idx, key))
        await self._notify()

    async def acquire(self, key: str, value: bytes, session_id: str) -> bool:
        self._event()
        sess = self._sessions.get(session_id)
        if sess is None:
            raise StoreError(f"session {session_id} does not exist (expired?); create a new one")
        kv = self._kv.get(key)
        if kv is not None and kv.session not in (None, session_id):
            return False
        if kv is None or kv.session is None:
            if time.monotonic() < self._lock_delay_until.get(key, 0.0):
                return False
        idx = self._bump()
        self._kv[key] = KV(key, bytes(value), idx, kv.create_index if kv else idx, session_id)
        sess.keys.add(key)
        await self._record(key, idx)
        return True

    async def release(self, key: str, session_id: str) -> bool:
        kv = self._kv.get(key)
        if kv is None or kv.session != session_id:
            return False
        idx = self._bump()
        self._kv[key] = KV(key, kv.value, idx, kv.create_index, None)
        sess = self._sessions.get(session_id)
        if sess:
            sess.keys.discard(key)
        await self._record(key, idx)
        return True

    # -- background ------------------------------------------------------------
    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_TICK_S)
            now = time.monotonic()
            for sid in [s for s, v in self._sessions.items() if v.deadline < now or self._check_failed(v)]:
                log.info("session %s (%s) expired or lost its health check; releasing its locks", sid, self._sessions[sid].name)
                await self.destroy_session(sid)
            for svc in list(self._services.values()):
                if svc.ttl_status == "passing" and svc.ttl_deadline < now:
                    before = svc.status
                    svc.ttl_status = "critical"
                    await self._after_status(svc, before)
                after = svc.reg.deregister_critical_after_s
                if (after is not None and svc.critical_since is not None
                        and now - svc.critical_since > after):
                    log.info("service %s critical for %.0fs; deregistering", svc.reg.service_id, after)
                    await self.deregister_service(svc.reg.service_id)

    def _check_failed(self, sess: _Session) -> bool:
        if sess.service_id is None:
            return False
        svc = self._services.get(sess.service_id)
        return svc is None or svc.status == "critical"

    async def close(self) -> None:
        for task in self._http_tasks.values():
            task.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
            self._ticker = None
