"""The Store: the one seam between mesh components and their shared state.

Two backends implement it with the same semantics (Consul's):

* every write bumps a global, monotonically increasing index; each key keeps the
  index of its last modification (``modify_index``);
* ``put(..., cas=N)`` writes only if the key's modify index is still N
  (``cas=0``: only if the key does not exist);
* ``watch(prefix, index, timeout)`` is a blocking query: it returns as soon as
  something under ``prefix`` changed after ``index``, or after ``timeout`` with
  the unchanged contents;
* services carry a TTL check (fed by their owner) and optionally an HTTP check;
  a service whose checks are not all passing is "critical" and drops out of the
  healthy set; after ``deregister_critical_after_s`` it is removed;
* sessions with a TTL guard locks: a key acquired by a session is released when
  the session is destroyed or expires, and may not be re-acquired for the
  session's lock delay.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["KV", "ServiceRegistration", "ServiceInstance", "Store", "StoreError", "StoreUnavailable"]


class StoreError(Exception):
    """The store refused an operation (bad key, unknown session...)."""


class StoreUnavailable(StoreError):
    """The store could not be reached; callers retry with backoff."""


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    modify_index: int
    create_index: int = 0
    session: str | None = None


@dataclass(frozen=True)
class ServiceRegistration:
    service_id: str
    name: str
    address: str
    port: int
    meta: Mapping[str, str] = field(default_factory=dict)
    ttl_s: float = 10.0
    # Consul's DeregisterCriticalServiceAfter; None keeps critical services.
    deregister_critical_after_s: float | None = None
    # Optional HTTP check (e.g. Triton's /v2/health/ready), polled every interval.
    http_check_url: str | None = None
    http_check_interval_s: float = 2.0


@dataclass(frozen=True)
class ServiceInstance:
    service_id: str
    name: str
    address: str
    port: int
    meta: Mapping[str, str]
    status: str  # passing | warning | critical

    @property
    def healthy(self) -> bool:
        return self.status == "passing"


class Store(abc.ABC):
    """Async key/value + service catalog + sessions, with Consul's semantics."""

    # -- key/value -------------------------------------------------------
    @abc.abstractmethod
    async def get(self, key: str) -> KV | None: ...

    @abc.abstractmethod
    async def list(self, prefix: str) -> tuple[int, list[KV]]:
        """All keys under ``prefix`` and the index to pass to ``watch``."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, *, cas: int | None = None) -> bool:
        """Write ``value``; with ``cas`` only if the modify index still matches."""

    @abc.abstractmethod
    async def delete(self, key: str, *, cas: int | None = None) -> bool: ...

    @abc.abstractmethod
    async def delete_prefix(self, prefix: str) -> None: ...

    @abc.abstractmethod
    async def watch(self, prefix: str, index: int, timeout: float) -> tuple[int, list[KV]]:
        """Blocking query: return when ``prefix`` changed after ``index`` or on timeout."""

    # -- services and health ---------------------------------------------
    @abc.abstractmethod
    async def register_service(self, reg: ServiceRegistration) -> None: ...

    @abc.abstractmethod
    async def deregister_service(self, service_id: str) -> None: ...

    @abc.abstractmethod
    async def pass_ttl(self, service_id: str, note: str = "") -> None: ...

    @abc.abstractmethod
    async def fail_ttl(self, service_id: str, note: str = "") -> None: ...

    @abc.abstractmethod
    async def services(
        self, name: str, *, passing_only: bool = False, index: int = 0, timeout: float = 0.0
    ) -> tuple[int, list[ServiceInstance]]:
        """Instances of service ``name``; with ``index`` > 0, a blocking query."""

    # -- sessions and locks ----------------------------------------------
    @abc.abstractmethod
    async def create_session(self, name: str, ttl_s: float, lock_delay_s: float,
                             health_service_id: str | None = None) -> str:
        """A session; with ``health_service_id`` it also ends as soon as that
        service's checks go critical (Consul: the session is tied to its checks)."""

    @abc.abstractmethod
    async def renew_session(self, session_id: str) -> bool:
        """False when the session no longer exists (expired or destroyed)."""

    @abc.abstractmethod
    async def destroy_session(self, session_id: str) -> None: ...

    @abc.abstractmethod
    async def acquire(self, key: str, value: bytes, session_id: str) -> bool: ...

    @abc.abstractmethod
    async def release(self, key: str, session_id: str) -> bool: ...

    async def close(self) -> None:  # noqa: B027  (optional hook, default no-op)
        """Release background resources."""
