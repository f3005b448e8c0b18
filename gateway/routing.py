"""The routing table: which ready replicas serve each model, kept current from
the store with blocking queries (placements, replica status, node health).
"""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

from mesh.store import Store, StoreError
from mesh.store.changes import ChangeWatcher
from mesh.types import KEYS, ModelSpec, NodeInfo, Placement, ReplicaStatus, from_json

__all__ = ["Endpoint", "ModelRoute", "RoutingTable"]

log = logging.getLogger(__name__)


@dataclass
class Endpoint:
    node: str
    address: str          # Triton gRPC host:port
    http_address: str = ""  # Triton HTTP host:port (for the few calls only HTTP renders)
    outstanding: int = 0  # requests in flight to this node (all models)


@dataclass
class ModelRoute:
    name: str
    endpoints: list[Endpoint] = field(default_factory=list)
    draining: list[Endpoint] = field(default_factory=list)  # used only when nothing else is ready
    canaries: list[Endpoint] = field(default_factory=list)
    canary_percent: float = 0.0
    expected: int = 0     # replicas placed
    why_none: str = ""

    def pick(self, exclude: str | None = None) -> Endpoint | None:
        """Least outstanding requests; ties broken at random (power of two choices).
        During a canary, ``canary_percent`` of requests go to the canary replicas."""
        eps: list[Endpoint] = []
        if self.canaries and (not self.endpoints or random.random() * 100 < self.canary_percent):
            eps = [e for e in self.canaries if e.node != exclude]
        eps = eps or [e for e in self.endpoints if e.node != exclude] or \
            [e for e in self.canaries if e.node != exclude] or [e for e in self.draining if e.node != exclude]
        if not eps:
            return None
        if len(eps) <= 2:
            return min(eps, key=lambda e: e.outstanding)
        a, b = random.sample(eps, 2)
        return a if a.outstanding <= b.outstanding else b


class RoutingTable:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.routes: dict[str, ModelRoute] = {}
        self.specs: dict[str, ModelSpec] = {}
        self._endpoints: dict[str, Endpoint] = {}   # node -> shared endpoint (keeps counters)
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()
        self.changed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def route(self, model: str) -> ModelRoute | None:
        return self.routes.get(model)

    async def refresh(self) -> None:
        _, spec_kvs = await self.store.list(KEYS.MODELS)
        _, pl_kvs = await self.store.list(KEYS.PLACEMENTS)
        _, st_kvs = await self.store.list(KEYS.STATUS)
        _, node_kvs = await self.store.list(KEYS.NODES)
        _, services = await self.store.services(KEYS.SERVICE)
        healthy = {s.service_id for s in services if s.healthy}
        nodes = {n.node_id: n for n in (from_json(NodeInfo, kv.value) for kv in node_kvs)}
        status = {}
        for kv in st_kvs:
            st = from_json(ReplicaStatus, kv.value)
            status[(st.node, st.model)] = st
        specs = {s.name: s for s in (from_json(ModelSpec, kv.value) for kv in spec_kvs)}
        routes: dict[str, ModelRoute] = {}
        for kv in pl_kvs:
            pl = from_json(Placement, kv.value)
            route = ModelRoute(pl.model, expected=len(pl.replicas))
            reasons = []
            for r in pl.replicas:
                st = status.get((r.node, pl.model))
                node = nodes.get(r.node)
                if node is None or r.node not in healthy:
                    reasons.append(f"{r.node} unhealthy")
                # Ready at another version is a replica reloading in place: Triton
                # serves the old version until the new one has loaded.
                elif st is None or st.state != "ready":
                    reasons.append(f"{r.node} {st.state if st else 'pending'}"
                                   + (f" ({st.error})" if st and st.error else ""))
                else:
                    ep = self._endpoints.get(r.node)
                    if ep is None or ep.address != node.address:
                        ep = Endpoint(r.node, node.address, node.http_address)
                        self._endpoints[r.node] = ep
                    {"draining": route.draining, "canary": route.canaries}.get(r.role, route.endpoints).append(ep)
            spec = specs.get(pl.model)
            route.canary_percent = float(spec.canary_traffic_percent or 0) if spec else 0.0
            if pl.unplaced:
                reasons.append(f"unplaced: {pl.unplaced[0]}")
            route.why_none = "; ".join(reasons) or "no replicas placed"
            routes[pl.model] = route
        for name in specs:
            routes.setdefault(name, ModelRoute(name, why_none="not placed yet"))
        self.routes, self.specs = routes, specs
        self.synced.set()
        self.changed.set()

    async def _run(self) -> None:
        changes = ChangeWatcher(self.store, "mesh/", KEYS.SERVICE, 10.0)
        try:
            while True:
                try:
                    await self.refresh()
                    while not await changes.wait():
                        pass  # a query timed out with nothing new: keep waiting
                except StoreError as exc:
                    # Keep routing on the last known table while the store is away.
                    log.error("gateway cannot read the store (%s); routing on the last known table", exc)
                    changes.reset()
                    await asyncio.sleep(1.0)
        finally:
            changes.reset()
