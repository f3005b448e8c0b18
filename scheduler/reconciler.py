"""The scheduler's shell: watch the store, snapshot, plan, write with check-and-set."""
from __future__ import annotations

import asyncio
import logging
import uuid

from mesh.store import KV, Store, StoreError
from mesh.types import KEYS, ModelSpec, NodeInfo, Placement, ReplicaStatus, from_json, to_json
from scheduler.leader import Leadership
from scheduler.placement import Snapshot, plan

__all__ = ["Reconciler", "read_snapshot"]

log = logging.getLogger(__name__)


async def read_snapshot(store: Store) -> tuple[Snapshot, dict[str, KV]]:
    """The current state, plus the placement KVs (their indexes guard the writes)."""
    _, spec_kvs = await store.list(KEYS.MODELS)
    _, node_kvs = await store.list(KEYS.NODES)
    _, pl_kvs = await store.list(KEYS.PLACEMENTS)
    _, services = await store.services(KEYS.SERVICE)
    _, status_kvs = await store.list(KEYS.STATUS)
    specs = {s.name: s for s in (from_json(ModelSpec, kv.value) for kv in spec_kvs)}
    nodes = {n.node_id: n for n in (from_json(NodeInfo, kv.value) for kv in node_kvs)}
    pls = {kv.key[len(KEYS.PLACEMENTS):]: kv for kv in pl_kvs}
    healthy = frozenset(s.service_id for s in services if s.healthy)
    placements = {m: from_json(Placement, kv.value) for m, kv in pls.items()}
    placed = {(r.node, m): r.version for m, pl in placements.items() for r in pl.replicas}
    ready = set()
    for kv in status_kvs:
        st = from_json(ReplicaStatus, kv.value)
        if st.state == "ready" and placed.get((st.node, st.model)) == st.version:
            ready.add((st.node, st.model))
    snap = Snapshot(specs=specs, nodes=nodes, healthy=healthy, placements=placements, ready=frozenset(ready))
    return snap, pls


class Reconciler:
    def __init__(self, store: Store, leadership: Leadership, resync_s: float = 5.0) -> None:
        self.store = store
        self.leadership = leadership
        self.resync_s = resync_s
        self.last_reasons: dict[str, tuple[str, ...]] = {}
        # The last state this leader saw, to put back if the store loses it
        # (a Consul agent restarted in -dev mode, a server cluster rebuilt).
        self._cluster_id: bytes | None = None
        self._seen: dict[str, bytes] = {}

    async def run(self) -> None:
        kv_index = svc_index = 0
        while True:
            try:
                # Every scheduler, leader or not, keeps a copy of the desired state
                # and puts it back if the store loses it; only the leader plans.
                await self._guard_against_store_reset()
                if not self.leadership.is_leader:
                    self.leadership.changed.clear()
                    try:
                        await asyncio.wait_for(self.leadership.changed.wait(), self.resync_s)
                    except asyncio.TimeoutError:
                        pass
                    kv_index = svc_index = 0
                    continue
                await self.reconcile_once()
                kv_index, svc_index = await self._wait_for_change(kv_index, svc_index)
            except StoreError as exc:
                log.error("scheduler cannot reach the store: %s; retrying in 1s", exc)
                kv_index = svc_index = 0
                await asyncio.sleep(1.0)

    async def _guard_against_store_reset(self) -> None:
        """A missing or different cluster marker means the store lost our state (a
        Consul agent restarted in -dev mode, a server cluster rebuilt): put back
        the specs and placements last seen, create-only, so nothing newer is touched."""
        marker = await self.store.get(KEYS.CLUSTER)
        lost = self._cluster_id is not None and (marker is None or marker.value != self._cluster_id)
        if lost and self._seen:
            log.warning("the store lost the mesh's state (cluster marker %s %s); restoring %d spec/placement "
                        "key(s) this scheduler holds", self._cluster_id.decode() if self._cluster_id else "?",
                        "gone" if marker is None else "replaced", len(self._seen))
            for key, value in self._seen.items():
                await self.store.put(key, value, cas=0)
        if marker is None and (self._cluster_id is not None or self.leadership.is_leader):
            self._cluster_id = self._cluster_id or uuid.uuid4().hex.encode()
            if not await self.store.put(KEYS.CLUSTER, self._cluster_id, cas=0):
                marker = await self.store.get(KEYS.CLUSTER)
        if marker is not None:
            self._cluster_id = marker.value
        if self._cluster_id is not None:
            _, specs = await self.store.list(KEYS.MODELS)
            _, pls = await self.store.list(KEYS.PLACEMENTS)
            self._seen = {kv.key: kv.value for kv in (*specs, *pls)}

    async def reconcile_once(self) -> int:
        """Plan once and write the changes; returns how many placements were written."""
        snap, pl_kvs = await read_snapshot(self.store)
        result = plan(snap)
        written = 0
        for model, pl in result.placements.items():
            old = pl_kvs.get(model)
            ok = await self.store.put(KEYS.placement(model), to_json(pl), cas=old.modify_index if old else 0)
            if not ok:
                log.info("placement of %s changed under us; replanning", model)
                continue
            written += 1
            for why in result.reasons.get(model, ()):
                log.info("%s: %s", model, why)
            for reason in pl.unplaced:
                log.warning("%s: a replica cannot be placed: %s", model, reason)
            self.last_reasons[model] = result.reasons.get(model, ())
        for model in result.deletions:
            old = pl_kvs[model]
            await self.store.delete(KEYS.placement(model), cas=old.modify_index)
            log.info("%s: deleted; its replicas will be unloaded", model)
            written += 1
        return written

    async def _wait_for_change(self, kv_index: int, svc_index: int) -> tuple[int, int]:
        kv_task = asyncio.ensure_future(self.store.watch("mesh/", kv_index, self.resync_s))
        svc_task = asyncio.ensure_future(self.store.services(KEYS.SERVICE, index=svc_index or 1, timeout=self.resync_s))
        done, pending = await asyncio.wait({kv_task, svc_task}, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for t in pending:
            try:
                await t
            except (asyncio.CancelledError, StoreError):
                pass
        if kv_task in done:
            kv_index = kv_task.result()[0]
        if svc_task in done:
            svc_index = svc_task.result()[0]
        return kv_index, svc_index
