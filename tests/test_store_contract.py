"""One contract suite, run on both Store backends: the in-memory one and a real Consul agent.

Every test body is an ``async def body(ctx)`` run by ``ctx.run``/``backend.run`` in a
fresh event loop with a fresh store; on the Consul backend each test gets its own
key prefix, service ids and sessions, removed afterwards. Waits are bounded polls
("eventually"), never fixed sleeps standing in for a condition.

Consul-imposed floors make a few tests slow on that backend (documented in
``mesh/store/consul.py``): session TTLs of at least 10 s, expiring between 1x and 2x
the TTL, and ``DeregisterCriticalServiceAfter`` of at least 1 min with a 30 s reaper.
"""
from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from mesh.store import (
    KV,
    MemoryStore,
    ServiceInstance,
    ServiceRegistration,
    Store,
    StoreError,
    StoreUnavailable,
)
from mesh.store.consul import ConsulStore
from support.consul import ConsulAgent, consul_agent  # noqa: F401  (pytest fixture)

BACKENDS = ["memory", "consul"]


@dataclass
class Ctx:
    kind: str
    store: Store
    prefix: str
    services: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def service(self, name: str, **kw: Any) -> ServiceRegistration:
        """A registration with an id and name unique to this test."""
        sid = f"{self.prefix.strip('/').replace('/', '-')}-{name}"
        self.services.append(sid)
        kw.setdefault("address", "127.0.0.1")
        kw.setdefault("port", 8001)
        return ServiceRegistration(service_id=sid, name=sid, **kw)

    async def session(self, name: str, ttl_s: float = 10.0, lock_delay_s: float = 0.0) -> str:
        sid = await self.store.create_session(f"{self.prefix}{name}", ttl_s, lock_delay_s)
        self.sessions.append(sid)
        return sid


@dataclass
class Backend:
    kind: str
    make: Callable[[], Store]

    def run(self, body: Callable[[Ctx], Awaitable[None]]) -> None:
        async def main() -> None:
            store = self.make()
            ctx = Ctx(self.kind, store, f"contract/{uuid.uuid4().hex[:12]}/")
            try:
                await body(ctx)
            finally:
                try:
                    for sid in ctx.sessions:
                        await store.destroy_session(sid)
                    for service_id in ctx.services:
                        await store.deregister_service(service_id)
                    await store.delete_prefix(ctx.prefix)
                finally:
                    await store.close()

        asyncio.run(main())


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return Backend("memory", MemoryStore)
    agent: ConsulAgent = request.getfixturevalue("consul_agent")
    return Backend("consul", lambda: ConsulStore.from_url(agent.url))


async def eventually(
    probe: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.2
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    pytest.fail(f"{what} did not happen within {timeout:.0f}s (last probe: {last!r})")


async def instance(store: Store, name: str, *, passing_only: bool = False) -> ServiceInstance | None:
    _, found = await store.services(name, passing_only=passing_only)
    return found[0] if found else None


def _status_is(store: Store, name: str, status: str) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        inst = await instance(store, name)
        return inst is not None and inst.status == status
    return probe


async def _put_later(store: Store, key: str, value: bytes, delay: float = 0.3) -> None:
    await asyncio.sleep(delay)
    assert await store.put(key, value)


# -- key/value ---------------------------------------------------------------------

def test_put_get_list(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s = ctx.store
        assert await s.get(ctx.key("missing")) is None
        assert await s.put(ctx.key("b"), b"two")
        assert await s.put(ctx.key("a"), b"one")
        assert await s.put(ctx.key("empty"), b"")
        assert await s.put(f"{ctx.prefix[:-1]}-outside", b"x")  # shares the string prefix, not the folder
        a = await s.get(ctx.key("a"))
        assert isinstance(a, KV)
        assert (a.key, a.value, a.session) == (ctx.key("a"), b"one", None)
        assert a.modify_index > 0 and a.create_index == a.modify_index
        assert (await s.get(ctx.key("empty"))).value == b""  # type: ignore[union-attr]

        assert await s.put(ctx.key("a"), b"uno")
        a2 = await s.get(ctx.key("a"))
        assert a2 is not None and a2.value == b"uno"
        assert a2.modify_index > a.modify_index and a2.create_index == a.create_index

        index, items = await s.list(ctx.prefix)
        assert [(kv.key, kv.value) for kv in items] == [
            (ctx.key("a"), b"uno"), (ctx.key("b"), b"two"), (ctx.key("empty"), b"")]
        assert index >= max(kv.modify_index for kv in items)
        await s.delete(f"{ctx.prefix[:-1]}-outside")

    backend.run(body)


def test_put_rejects_non_bytes(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        with pytest.raises(StoreError):
            await ctx.store.put(ctx.key("k"), "text")  # type: ignore[arg-type]
        assert await ctx.store.get(ctx.key("k")) is None

    backend.run(body)


def test_cas_zero_is_create_only(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s, k = ctx.store, ctx.key("k")
        assert await s.put(k, b"first", cas=0)
        assert not await s.put(k, b"second", cas=0)
        kv = await s.get(k)
        assert kv is not None and kv.value == b"first"

    backend.run(body)


def test_cas_on_modify_index(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s, k = ctx.store, ctx.key("k")
        assert await s.put(k, b"v1")
        v1 = await s.get(k)
        assert v1 is not None
        assert await s.put(k, b"v2", cas=v1.modify_index)
        v2 = await s.get(k)
        assert v2 is not None and v2.value == b"v2"
        # v1's index is stale now: the write is refused and changes nothing.
        assert not await s.put(k, b"lost", cas=v1.modify_index)
        after = await s.get(k)
        assert after == v2

    backend.run(body)


def test_delete_with_cas(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s, k = ctx.store, ctx.key("k")
        assert await s.put(k, b"v1")
        v1 = await s.get(k)
        assert v1 is not None
        assert await s.put(k, b"v2")
        assert not await s.delete(k, cas=v1.modify_index)
        v2 = await s.get(k)
        assert v2 is not None and v2.value == b"v2"
        assert await s.delete(k, cas=v2.modify_index)
        assert await s.get(k) is None
        assert await s.delete(ctx.key("never-there"))  # plain delete is idempotent
        # So is a check-and-set delete of a key that is already gone (Consul's answer).
        assert await s.delete(k, cas=v2.modify_index)
        assert await s.delete(ctx.key("never-there"), cas=0)

    backend.run(body)


def test_delete_prefix(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s = ctx.store
        for name in ("app/a", "app/b/c", "apple", "other"):
            assert await s.put(ctx.key(name), name.encode())
        await s.delete_prefix(ctx.key("app/"))
        _, items = await s.list(ctx.prefix)
        assert [kv.key for kv in items] == [ctx.key("apple"), ctx.key("other")]
        await s.delete_prefix(ctx.key("nothing-here/"))  # no-op, no error

    backend.run(body)


# -- watch ---------------------------------------------------------------------------

def test_watch_wakes_on_change(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s, watched = ctx.store, ctx.key("w/")
        assert await s.put(ctx.key("w/a"), b"old")
        index, items = await s.list(watched)
        assert [kv.value for kv in items] == [b"old"]
        writer = asyncio.create_task(_put_later(s, ctx.key("w/b"), b"new"))
        new_index, new_items = await s.watch(watched, index, timeout=5.0)
        await writer
        assert new_index > index
        assert [(kv.key, kv.value) for kv in new_items] == [
            (ctx.key("w/a"), b"old"), (ctx.key("w/b"), b"new")]

    backend.run(body)


def test_watch_wakes_on_delete(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s, watched = ctx.store, ctx.key("w/")
        assert await s.put(ctx.key("w/a"), b"a")
        assert await s.put(ctx.key("w/b"), b"b")
        index, _ = await s.list(watched)

        async def delete_later() -> None:
            await asyncio.sleep(0.3)
            assert await s.delete(ctx.key("w/a"))

        deleter = asyncio.create_task(delete_later())
        new_index, items = await s.watch(watched, index, timeout=5.0)
        await deleter
        assert new_index > index
        assert [kv.key for kv in items] == [ctx.key("w/b")]

    backend.run(body)


def test_watch_times_out_unchanged(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s, watched = ctx.store, ctx.key("w/")
        assert await s.put(ctx.key("w/a"), b"a")
        index, items = await s.list(watched)
        started = time.monotonic()
        new_index, new_items = await s.watch(watched, index, timeout=1.0)
        assert time.monotonic() - started >= 0.9  # it blocked for the timeout
        assert new_index == index
        assert new_items == items

    backend.run(body)


def test_watch_ignores_changes_outside_prefix(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s, watched = ctx.store, ctx.key("w/")
        assert await s.put(ctx.key("w/a"), b"a")
        index, items = await s.list(watched)

        async def write_outside() -> None:
            for i in range(3):
                await asyncio.sleep(0.2)
                assert await s.put(ctx.key(f"w-sibling/{i}"), b"x")  # same string prefix "w"
                assert await s.put(ctx.key("wx"), str(i).encode())

        writer = asyncio.create_task(write_outside())
        started = time.monotonic()
        _, new_items = await s.watch(watched, index, timeout=1.5)
        await writer
        # Nothing under the prefix changed: the watch ran to its timeout and
        # reports the same contents (the memory store's index is global, so
        # only the contents are compared).
        assert time.monotonic() - started >= 1.4
        assert new_items == items

    backend.run(body)


# -- services and health -----------------------------------------------------------

def test_service_ttl_pass_then_expire(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s = ctx.store
        reg = ctx.service("ttl", ttl_s=2.0, meta={"gpu": "0", "zone": "a"})
        await s.register_service(reg)
        # A TTL check starts critical until its owner first reports in.
        inst = await eventually(lambda: instance(s, reg.name), 5, "registration visible")
        assert inst.status == "critical" and not inst.healthy
        assert await instance(s, reg.name, passing_only=True) is None

        await s.pass_ttl(reg.service_id, "ready")
        inst = await eventually(lambda: instance(s, reg.name, passing_only=True), 5, "passing after pass_ttl")
        assert (inst.service_id, inst.name, inst.address, inst.port) == (reg.service_id, reg.name, "127.0.0.1", 8001)
        assert dict(inst.meta) == {"gpu": "0", "zone": "a"}
        assert inst.status == "passing" and inst.healthy

        # No heartbeat: critical after the TTL, and out of the healthy set.
        await eventually(_status_is(s, reg.name, "critical"), reg.ttl_s + 6, "critical after TTL")
        assert await instance(s, reg.name, passing_only=True) is None

    backend.run(body)


def test_fail_ttl_marks_critical(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s = ctx.store
        reg = ctx.service("fail", ttl_s=30.0)
        await s.register_service(reg)
        await s.pass_ttl(reg.service_id)
        await eventually(_status_is(s, reg.name, "passing"), 5, "passing")
        await s.fail_ttl(reg.service_id, "model failed to load")
        await eventually(_status_is(s, reg.name, "critical"), 5, "critical after fail_ttl")
        assert await instance(s, reg.name, passing_only=True) is None
        await s.deregister_service(reg.service_id)
        await eventually(lambda: _absent(s, reg.name), 5, "gone after deregister")

    backend.run(body)


async def _absent(store: Store, name: str) -> bool:
    _, found = await store.services(name)
    return not found


def test_ttl_update_for_unknown_service_fails(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        with pytest.raises(StoreError):
            await ctx.store.pass_ttl(f"{ctx.prefix.replace('/', '-')}nobody")

    backend.run(body)


def test_http_check_follows_endpoint(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s = ctx.store
        answer = {"status": 200}

        async def ready(_: web.Request) -> web.Response:
            return web.Response(status=answer["status"], text="ok" if answer["status"] == 200 else "not ready")

        app = web.Application()
        app.router.add_get("/v2/health/ready", ready)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            reg = ctx.service("http", ttl_s=60.0, http_check_url=f"http://127.0.0.1:{port}/v2/health/ready",
                              http_check_interval_s=1.0)
            await s.register_service(reg)
            await s.pass_ttl(reg.service_id)
            await eventually(_status_is(s, reg.name, "passing"), 10, "passing while the endpoint answers 200")
            answer["status"] = 503
            await eventually(_status_is(s, reg.name, "critical"), 10, "critical once the endpoint answers 503")
            assert await instance(s, reg.name, passing_only=True) is None
            answer["status"] = 200
            await eventually(_status_is(s, reg.name, "passing"), 10, "passing again after recovery")
        finally:
            await s.deregister_service(reg.service_id)
            await runner.cleanup()

    backend.run(body)


def test_blocking_services_query_wakes_on_status_change(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s = ctx.store
        reg = ctx.service("block", ttl_s=30.0)
        await s.register_service(reg)
        await s.pass_ttl(reg.service_id)
        await eventually(_status_is(s, reg.name, "passing"), 5, "passing")
        index, found = await s.services(reg.name)
        assert [i.status for i in found] == ["passing"]

        async def fail_later() -> None:
            await asyncio.sleep(0.3)
            await s.fail_ttl(reg.service_id, "going down")

        failer = asyncio.create_task(fail_later())
        # Each blocking query returns on a change (or its timeout); the status
        # change must arrive through them, not through polling.
        deadline = time.monotonic() + 10
        status = "passing"
        while status != "critical" and time.monotonic() < deadline:
            new_index, found = await s.services(reg.name, index=index, timeout=5.0)
            assert new_index >= index
            if new_index > index:
                status = found[0].status if found else "gone"
            index = new_index
        await failer
        assert status == "critical"

    backend.run(body)


def test_blocking_services_query_times_out(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s = ctx.store
        reg = ctx.service("quiet", ttl_s=60.0)
        await s.register_service(reg)
        await s.pass_ttl(reg.service_id)
        await eventually(_status_is(s, reg.name, "passing"), 5, "passing")
        index, found = await s.services(reg.name)
        started = time.monotonic()
        new_index, new_found = await s.services(reg.name, index=index, timeout=1.0)
        assert time.monotonic() - started >= 0.9
        assert new_index == index and new_found == found

    backend.run(body)


def test_deregister_critical_service_after(backend: Backend) -> None:
    # Consul raises DeregisterCriticalServiceAfter to at least 1 minute and reaps
    # every 30 s, so there the service goes 60-90 s after turning critical; the
    # memory store honours the 1 s asked for. This is the suite's slowest test.
    bound = 10.0 if backend.kind == "memory" else 110.0

    async def body(ctx: Ctx) -> None:
        s = ctx.store
        reg = ctx.service("reap", ttl_s=1.0, deregister_critical_after_s=1.0)
        keep = ctx.service("keep", ttl_s=1.0)  # critical too, but never reaped
        await s.register_service(reg)
        await s.register_service(keep)
        await s.pass_ttl(reg.service_id)
        await s.pass_ttl(keep.service_id)
        await eventually(_status_is(s, reg.name, "critical"), 8, "critical after the TTL lapsed")
        await eventually(lambda: _absent(s, reg.name), bound, "deregistration of the critical service",
                         interval=0.5)
        kept = await instance(s, keep.name)
        assert kept is not None and kept.status == "critical"

    backend.run(body)


# -- sessions and locks ----------------------------------------------------------------

def test_lock_handover_after_destroy_and_lock_delay(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s, k = ctx.store, ctx.key("leader")
        a = await ctx.session("a", ttl_s=10.0, lock_delay_s=3.0)
        b = await ctx.session("b", ttl_s=10.0, lock_delay_s=0.0)
        assert await s.acquire(k, b"A", a)
        assert await s.acquire(k, b"A again", a)  # re-acquiring one's own lock is fine
        assert not await s.acquire(k, b"B", b)
        held = await s.get(k)
        assert held is not None and held.session == a and held.value == b"A again"
        assert not await s.release(k, b)  # B does not hold it

        await s.destroy_session(a)
        released = await s.get(k)
        assert released is not None and released.session is None and released.value == b"A again"
        # A's lock delay (3 s) keeps the key from being taken at once...
        assert not await s.acquire(k, b"B", b)
        # ...and then B gets it.
        await eventually(lambda: s.acquire(k, b"B", b), 10, "B acquiring after the lock delay")
        held = await s.get(k)
        assert held is not None and held.session == b and held.value == b"B"

        # An explicit release frees the key at once and keeps its value.
        assert await s.release(k, b)
        freed = await s.get(k)
        assert freed is not None and freed.session is None and freed.value == b"B"
        c = await ctx.session("c", ttl_s=10.0)
        assert await s.acquire(k, b"C", c)

    backend.run(body)


def test_session_ttl_expiry_releases_lock(backend: Backend) -> None:
    # Consul's minimum session TTL is 10 s and it invalidates between 1x and 2x
    # the TTL; the memory store expires at 1x. Bounded wait: 2x TTL plus slack.
    async def body(ctx: Ctx) -> None:
        s, k = ctx.store, ctx.key("leader")
        sid = await ctx.session("short", ttl_s=10.0, lock_delay_s=0.0)
        assert await s.renew_session(sid)
        assert await s.acquire(k, b"me", sid)

        async def released() -> bool:
            kv = await s.get(k)
            return kv is not None and kv.session is None

        await eventually(released, 2 * 10 + 8, "lock release after the session TTL", interval=0.5)
        assert not await s.renew_session(sid)
        other = await ctx.session("next", ttl_s=10.0)
        assert await s.acquire(k, b"next", other)

    backend.run(body)


def test_session_tied_to_service_check_ends_when_check_fails(backend: Backend) -> None:
    # Leader election relies on this: the lock goes when its holder stops feeding
    # a short TTL check, long before the (>= 10 s on Consul) session TTL.
    async def body(ctx: Ctx) -> None:
        s, k = ctx.store, ctx.key("leader")
        reg = ctx.service("holder", ttl_s=2.0)
        await s.register_service(reg)
        await s.pass_ttl(reg.service_id)
        sid = await s.create_session(f"{ctx.prefix}tied", 30.0, 0.0, health_service_id=reg.service_id)
        ctx.sessions.append(sid)
        assert await s.acquire(k, b"me", sid)

        async def released() -> bool:
            kv = await s.get(k)
            return kv is not None and kv.session is None

        await eventually(released, 15, "lock release after the tied check went critical", interval=0.25)
        assert not await s.renew_session(sid)

    backend.run(body)


def test_session_cannot_tie_to_critical_service(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        reg = ctx.service("down", ttl_s=5.0)
        await ctx.store.register_service(reg)
        await ctx.store.fail_ttl(reg.service_id)
        with pytest.raises(StoreError):
            await ctx.store.create_session(f"{ctx.prefix}x", 10.0, 0.0, health_service_id=reg.service_id)

    backend.run(body)


def test_renew_destroyed_session_returns_false(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        s = ctx.store
        sid = await ctx.session("gone", ttl_s=10.0)
        assert await s.renew_session(sid)
        await s.destroy_session(sid)
        assert not await s.renew_session(sid)

    backend.run(body)


def test_acquire_with_unknown_session_fails(backend: Backend) -> None:
    async def body(ctx: Ctx) -> None:
        sid = await ctx.session("gone", ttl_s=10.0)
        await ctx.store.destroy_session(sid)
        with pytest.raises(StoreError):
            await ctx.store.acquire(ctx.key("k"), b"x", sid)
        assert await ctx.store.get(ctx.key("k")) is None

    backend.run(body)


# -- Consul-only: addressing and failures ----------------------------------------------

def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_consul_unreachable_raises_store_unavailable() -> None:
    port = _closed_port()

    async def body() -> None:
        store = ConsulStore.from_url(f"consul://127.0.0.1:{port}")
        try:
            with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}"):
                await store.get("k")
            with pytest.raises(StoreUnavailable):
                await store.watch("p/", 5, timeout=1.0)
        finally:
            await store.close()

    asyncio.run(body())


def test_consul_from_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    monkeypatch.delenv("CONSUL_CACERT", raising=False)
    s = ConsulStore.from_url("consul://10.0.0.5:8600", token="t1")
    assert (s.address, s._token, s._verify) == ("http://10.0.0.5:8600", "t1", True)
    s = ConsulStore.from_url("consuls://consul.internal")
    assert s.address == "https://consul.internal:8500"

    monkeypatch.setenv("CONSUL_HTTP_ADDR", "https://10.1.2.3:8501")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
    monkeypatch.setenv("CONSUL_CACERT", "/etc/consul/ca.pem")
    s = ConsulStore.from_url("consul://")
    assert (s.address, s._token, s._verify) == ("https://10.1.2.3:8501", "from-env", "/etc/consul/ca.pem")
    s = ConsulStore.from_url("consul://127.0.0.1:8500", token="explicit")
    assert (s.address, s._token) == ("http://127.0.0.1:8500", "explicit")
    with pytest.raises(StoreError):
        ConsulStore.from_url("redis://x")


def test_consul_store_survives_agent_restart(consul_agent: ConsulAgent) -> None:  # noqa: F811
    """A -dev agent restarted on the same port: calls fail as unavailable while it
    is down and work again once it is back (with empty state)."""
    agent = ConsulAgent(binary=consul_agent.binary).start()

    async def body() -> None:
        store = ConsulStore.from_url(agent.url)
        try:
            assert await store.put("k", b"v")
            agent.kill()
            with pytest.raises(StoreUnavailable):
                await store.get("k")
            await asyncio.get_running_loop().run_in_executor(None, agent.start)
            assert await store.get("k") is None  # -dev state is in memory only
            assert await store.put("k", b"again")
        finally:
            await store.close()

    try:
        asyncio.run(body())
    finally:
        agent.stop()

