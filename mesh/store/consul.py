"""Consul Store: the production backend, on py-consul.

py-consul's ``consul.Consul`` client is synchronous (``requests``); its ``consul.aio``
twin builds its aiohttp connector with arguments aiohttp deprecates and has no
per-request timeout for blocking queries, so every call here runs the synchronous
client in a thread pool, one client (one ``requests.Session``) per worker thread.

Mapping (see ``mesh.store.base`` for the contract):

* KV: ``get``/``put``/``delete`` map to ``/v1/kv`` with ``cas``; ``list`` and
  ``watch`` are recursive reads whose ``X-Consul-Index`` is the index to watch from;
  ``watch`` is a blocking query that is re-issued when Consul wakes early with the
  same index (it may) until the index moves or the timeout passes.
* Services: one agent service per registration, with a TTL check ``service:<id>``
  and, with ``http_check_url``, an HTTP check ``service:<id>:http``. A service's
  status is the worst of all its checks, the node's ``serfHealth`` included.
* Sessions: ``behavior=release`` sessions; ``acquire``/``release`` are KV writes
  with ``?acquire=``/``?release=``.

Where Consul differs from the in-memory store, and cannot be made not to:

* a session TTL is at least 10 s (shorter ones are raised to 10 s), and Consul
  invalidates a session only between 1x and 2x its TTL after the last renewal;
  lock delay is at most 60 s;
* ``deregister_critical_after_s`` is at least 60 s, and the agent's reaper runs
  every 30 s, so a critical service disappears 60-90 s after going critical;
* an HTTP check interval is at least 1 s;
* for a prefix holding no keys (and no recent deletes) Consul reports the whole KV
  table's index, so a ``watch`` on it may also wake on writes elsewhere, returning
  the same (empty) contents; callers treat every wake-up as "maybe changed" anyway;
* a blocking query abandoned by a cancelled task keeps its worker thread until
  Consul answers (at most the query's own timeout plus Consul's jitter).
"""
from __future__ import annotations

import asyncio
import functools
import math
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import consul
import requests
from consul.exceptions import (
    ACLDisabled,
    ACLPermissionDenied,
    BadRequest,
    ClientError,
    ConsulException,
    NotFound,
)

from mesh.store.base import (
    KV,
    ServiceInstance,
    ServiceRegistration,
    Store,
    StoreError,
    StoreUnavailable,
)

__all__ = ["ConsulStore"]

T = TypeVar("T")

DEFAULT_PORT = 8500
# Consul refuses session TTLs outside [10s, 86400s] and caps lock delay at 60s.
MIN_SESSION_TTL_S = 10
MAX_SESSION_TTL_S = 86400
MAX_LOCK_DELAY_S = 60.0
MIN_CHECK_INTERVAL_S = 1.0
# How long a single (non-blocking) request may take before Consul counts as unreachable.
REQUEST_TIMEOUT_S = 10.0
_STATUS_RANK = {"passing": 0, "warning": 1, "critical": 2}


def _duration(seconds: float) -> str:
    """A Go duration string Consul accepts, with millisecond resolution."""
    return f"{max(0, round(seconds * 1000))}ms"


def _check_id(service_id: str) -> str:
    return f"service:{service_id}"


def _http_check_id(service_id: str) -> str:
    return f"service:{service_id}:http"


def _kv(entry: dict[str, Any]) -> KV:
    return KV(
        key=entry["Key"],
        value=entry.get("Value") or b"",
        modify_index=int(entry["ModifyIndex"]),
        create_index=int(entry.get("CreateIndex", 0)),
        session=entry.get("Session") or None,
    )


def _status_code(exc: ConsulException) -> int | None:
    head = str(exc).split(" ", 1)[0]
    return int(head) if head.isdigit() else None


class ConsulStore(Store):
    """Store backed by a Consul agent's HTTP API."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        scheme: str = "http",
        token: str | None = None,
        verify: bool | str = True,
        max_workers: int = 32,  # concurrent blocking queries (watch, services)
    ) -> None:
        if scheme not in ("http", "https"):
            raise StoreError(f"Consul scheme must be http or https, got {scheme!r}")
        self._host = host
        self._port = port
        self._scheme = scheme
        self._token = token
        self._verify = verify
        self.address = f"{scheme}://{host}:{port}"
        self._local = threading.local()
        # Blocking queries hold a thread for up to their wait (longer when their
        # task was cancelled: the thread cannot be interrupted), so they get their
        # own pool and never starve the short calls.
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="consul-store")
        self._blocking = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="consul-watch")
        self._closed = False

    @classmethod
    def from_url(cls, url: str, token: str | None = None) -> ConsulStore:
        """``consul://HOST:PORT`` or ``consuls://HOST:PORT`` (TLS).

        Without a host in the URL, ``CONSUL_HTTP_ADDR`` is used (``host:port`` or
        ``http(s)://host:port``); without ``token``, ``CONSUL_HTTP_TOKEN``. For TLS,
        ``CONSUL_CACERT`` names the CA bundle to verify the agent's certificate with.
        """
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("consul", "consuls"):
            raise StoreError(f"not a Consul store URL: {url!r}; use consul://HOST:PORT or consuls://HOST:PORT")
        scheme = "https" if parsed.scheme == "consuls" else "http"
        host, port = parsed.hostname, None
        try:
            port = parsed.port
        except ValueError as exc:
            raise StoreError(f"bad port in Consul store URL {url!r}") from exc
        if not host:
            env_addr = os.environ.get("CONSUL_HTTP_ADDR", "")
            if env_addr:
                env = urllib.parse.urlsplit(env_addr if "//" in env_addr else f"//{env_addr}")
                host = env.hostname
                try:
                    port = env.port
                except ValueError as exc:
                    raise StoreError(f"bad port in CONSUL_HTTP_ADDR={env_addr!r}") from exc
                if env.scheme == "https":
                    scheme = "https"
            if not host:
                host = "127.0.0.1"
        if token is None:
            token = os.environ.get("CONSUL_HTTP_TOKEN") or None
        verify: bool | str = True
        if scheme == "https" and os.environ.get("CONSUL_CACERT"):
            verify = os.environ["CONSUL_CACERT"]
        return cls(host, port or DEFAULT_PORT, scheme=scheme, token=token, verify=verify)

    def __repr__(self) -> str:
        return f"ConsulStore({self.address})"

    # -- plumbing ------------------------------------------------------------
    def _client(self) -> consul.Consul:
        client = getattr(self._local, "client", None)
        if client is None:
            client = consul.Consul(
                host=self._host, port=self._port, scheme=self._scheme, verify=self._verify,
                connections_timeout=REQUEST_TIMEOUT_S,
            )
            # py-consul prefers CONSUL_HTTP_TOKEN over its argument; ours wins.
            client.token = self._token
            self._local.client = client
        return client

    async def _run(self, what: str, fn: Callable[[consul.Consul], T], *, blocking: bool = False) -> T:
        """Run ``fn(client)`` on a worker thread, translating Consul's failures."""
        if self._closed:
            raise StoreError(f"{self!r} is closed")

        def call() -> T:
            return fn(self._client())

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._blocking if blocking else self._executor, call)
        except (requests.ConnectionError, requests.Timeout, consul.Timeout) as exc:
            raise StoreUnavailable(
                f"Consul at {self.address} did not answer while {what} ({type(exc).__name__}); "
                "check that the agent is running and that the store URL / CONSUL_HTTP_ADDR points at it"
            ) from exc
        except (ACLPermissionDenied, ACLDisabled) as exc:
            raise StoreError(
                f"Consul at {self.address} refused {what}: permission denied ({exc}); "
                "check the ACL token (--store-token / CONSUL_HTTP_TOKEN) and its policy"
            ) from exc
        except (BadRequest, ClientError, NotFound) as exc:
            raise StoreError(f"Consul at {self.address} rejected {what}: {exc}") from exc
        except ConsulException as exc:
            code = _status_code(exc)
            text = str(exc)
            if code is not None and code >= 500 and "invalid session" not in text:
                raise StoreUnavailable(
                    f"Consul at {self.address} failed while {what}: {text.strip()}; "
                    "check the agent's log and that its cluster has a leader (consul operator raft list-peers)"
                ) from exc
            raise StoreError(f"Consul at {self.address} rejected {what}: {text.strip()}") from exc
        except RuntimeError as exc:
            if self._closed or "shutdown" in str(exc):
                raise StoreError(f"{self!r} is closed") from exc
            raise

    @staticmethod
    def _check_key(key: str) -> None:
        if key.startswith("/"):
            raise StoreError(f"key {key!r} must not start with '/'")

    # -- key/value -----------------------------------------------------------
    async def get(self, key: str) -> KV | None:
        self._check_key(key)
        _, entry = await self._run(f"reading key {key!r}", lambda c: c.kv.get(key))
        return _kv(entry) if entry else None

    async def list(self, prefix: str) -> tuple[int, list[KV]]:
        self._check_key(prefix)
        index, entries = await self._run(
            f"listing prefix {prefix!r}", lambda c: c.kv.get(prefix, recurse=True))
        return int(index), [_kv(e) for e in entries or ()]

    async def put(self, key: str, value: bytes, *, cas: int | None = None) -> bool:
        self._check_key(key)
        if not isinstance(value, (bytes, bytearray)):
            raise StoreError(f"value for {key!r} must be bytes, got {type(value).__name__}")
        data = bytes(value)
        return bool(await self._run(f"writing key {key!r}", lambda c: c.kv.put(key, data, cas=cas)))

    async def delete(self, key: str, *, cas: int | None = None) -> bool:
        self._check_key(key)
        return bool(await self._run(f"deleting key {key!r}", lambda c: c.kv.delete(key, cas=cas)))

    async def delete_prefix(self, prefix: str) -> None:
        self._check_key(prefix)
        await self._run(f"deleting prefix {prefix!r}", lambda c: c.kv.delete(prefix, recurse=True))

    async def watch(self, prefix: str, index: int, timeout: float) -> tuple[int, list[KV]]:
        self._check_key(prefix)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            remaining = deadline - time.monotonic()
            if index <= 0 or remaining <= 0:
                return await self.list(prefix)
            wait = _duration(remaining)
            new_index, entries = await self._run(
                f"watching prefix {prefix!r}",
                functools.partial(_blocking_kv, prefix=prefix, index=index, wait=wait), blocking=True)
            # A smaller index means Consul's state was reset (e.g. a restarted
            # dev agent): report it as a change so the caller re-reads from scratch.
            if new_index != index:
                return new_index, [_kv(e) for e in entries or ()]
            if time.monotonic() >= deadline:
                return new_index, [_kv(e) for e in entries or ()]

    # -- services and health ---------------------------------------------------
    async def register_service(self, reg: ServiceRegistration) -> None:
        ttl_check: dict[str, Any] = {
            "CheckID": _check_id(reg.service_id),
            "Name": f"{reg.name} TTL (fed by its owner)",
            "TTL": _duration(reg.ttl_s),
        }
        extra: list[dict[str, Any]] = []
        if reg.http_check_url:
            interval = max(MIN_CHECK_INTERVAL_S, reg.http_check_interval_s)
            extra.append({
                "CheckID": _http_check_id(reg.service_id),
                "Name": f"{reg.name} HTTP {reg.http_check_url}",
                "HTTP": reg.http_check_url,
                "Interval": _duration(interval),
                "Timeout": _duration(min(interval, REQUEST_TIMEOUT_S)),
            })
        if reg.deregister_critical_after_s is not None:
            after = _duration(reg.deregister_critical_after_s)
            for check in (ttl_check, *extra):
                check["DeregisterCriticalServiceAfter"] = after
        meta = {str(k): str(v) for k, v in reg.meta.items()}

        def register(c: consul.Consul) -> bool:
            return c.agent.service.register(
                reg.name, service_id=reg.service_id, address=reg.address, port=reg.port,
                meta=meta, check=ttl_check, extra_checks=extra, replace_existing_checks=True)

        ok = await self._run(f"registering service {reg.service_id!r}", register)
        if not ok:
            raise StoreError(f"Consul at {self.address} did not register service {reg.service_id!r}")

    async def deregister_service(self, service_id: str) -> None:
        # False (404) means it was not registered here: nothing to do, as in memory.
        await self._run(f"deregistering service {service_id!r}",
                        lambda c: c.agent.service.deregister(service_id))

    async def pass_ttl(self, service_id: str, note: str = "") -> None:
        await self._ttl(service_id, note, passing=True)

    async def fail_ttl(self, service_id: str, note: str = "") -> None:
        await self._ttl(service_id, note, passing=False)

    async def _ttl(self, service_id: str, note: str, *, passing: bool) -> None:
        cid = _check_id(service_id)

        def update(c: consul.Consul) -> bool:
            fn = c.agent.check.ttl_pass if passing else c.agent.check.ttl_fail
            return fn(cid, notes=note or None)

        ok = await self._run(f"updating TTL check {cid!r}", update)
        if not ok:
            raise StoreError(
                f"no service {service_id!r} is registered with the Consul agent at {self.address}; "
                "register it first (a restarted agent forgets its services)")

    async def services(
        self, name: str, *, passing_only: bool = False, index: int = 0, timeout: float = 0.0
    ) -> tuple[int, list[ServiceInstance]]:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            remaining = deadline - time.monotonic()
            blocking = index > 0 and remaining > 0
            query = functools.partial(
                _health_service, name=name, passing=passing_only,
                index=index if blocking else None, wait=_duration(remaining) if blocking else None)
            new_index, nodes = await self._run(f"querying service {name!r}", query, blocking=blocking)
            new_index = int(new_index)
            if not blocking or new_index != index or time.monotonic() >= deadline:
                out = [_instance(n) for n in nodes or ()]
                out.sort(key=lambda i: i.service_id)
                return new_index, out

    # -- sessions and locks ----------------------------------------------------
    async def create_session(self, name: str, ttl_s: float, lock_delay_s: float,
                             health_service_id: str | None = None) -> str:
        ttl = min(MAX_SESSION_TTL_S, max(MIN_SESSION_TTL_S, math.ceil(ttl_s)))
        delay = min(MAX_LOCK_DELAY_S, max(0.0, lock_delay_s))
        # py-consul formats lock_delay as "<n>s" and skips its default of 15.
        lock_delay: int | float = int(delay) if delay == int(delay) else delay

        def create(c: consul.Consul) -> str:
            # Tied to the agent's serfHealth and the owner's TTL check: Consul ends the
            # session as soon as either goes critical, well before the session TTL.
            checks = ["serfHealth", _check_id(health_service_id)] if health_service_id else None
            return c.session.create(name=name, ttl=ttl, lock_delay=lock_delay, behavior="release", checks=checks)

        sid = await self._run(f"creating session {name!r}", create)
        if not sid:
            raise StoreError(f"Consul at {self.address} returned no session id for {name!r}")
        return str(sid)

    async def renew_session(self, session_id: str) -> bool:
        def renew(c: consul.Consul) -> bool:
            try:
                return c.session.renew(session_id) is not None
            except NotFound:
                return False

        return await self._run(f"renewing session {session_id}", renew)

    async def destroy_session(self, session_id: str) -> None:
        await self._run(f"destroying session {session_id}", lambda c: c.session.destroy(session_id))

    async def acquire(self, key: str, value: bytes, session_id: str) -> bool:
        self._check_key(key)
        data = bytes(value)
        return bool(await self._run(
            f"acquiring {key!r} for session {session_id}",
            lambda c: c.kv.put(key, data, acquire=session_id)))

    async def release(self, key: str, session_id: str) -> bool:
        self._check_key(key)

        def release(c: consul.Consul) -> bool:
            # ?release= also writes the request body: send the current value back
            # so that releasing leaves the value as it was (as the memory store does).
            _, entry = c.kv.get(key)
            if not entry or entry.get("Session") != session_id:
                return False
            return bool(c.kv.put(key, entry.get("Value") or b"", release=session_id))

        return await self._run(f"releasing {key!r} for session {session_id}", release)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Blocking queries already on a worker finish on their own (bounded by their wait).
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._blocking.shutdown(wait=False, cancel_futures=True)


def _blocking_kv(c: consul.Consul, *, prefix: str, index: int, wait: str) -> tuple[int, Any]:
    new_index, entries = c.kv.get(prefix, recurse=True, index=index, wait=wait)
    return int(new_index), entries


def _health_service(
    c: consul.Consul, *, name: str, passing: bool, index: int | None, wait: str | None
) -> tuple[str, Any]:
    return c.health.service(name, passing=passing, index=index, wait=wait)


def _instance(node: dict[str, Any]) -> ServiceInstance:
    svc = node["Service"]
    worst = max((_STATUS_RANK.get(ch.get("Status", "critical"), 2) for ch in node.get("Checks") or ()),
                default=0)
    status = {0: "passing", 1: "warning", 2: "critical"}[worst]
    address = svc.get("Address") or (node.get("Node") or {}).get("Address", "")
    return ServiceInstance(
        service_id=svc["ID"], name=svc["Service"], address=address, port=int(svc.get("Port") or 0),
        meta=dict(svc.get("Meta") or {}), status=status)
