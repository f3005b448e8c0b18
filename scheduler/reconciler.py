"""The scheduler's shell: watch the store, snapshot, plan, write with check-and-set."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import deque

from mesh.store import KV, Store, StoreError
from mesh.store.changes import ChangeWatcher
from mesh.types import (
    KEYS,
    AutoscaleDecision,
    LoadReport,
    ModelLoad,
    ModelSpec,
    NodeInfo,
    Placement,
    ReplicaStatus,
    from_json,
    to_json,
)
from scheduler.autoscale import Memory, Sample, decide
from scheduler.leader import Leadership
from scheduler.placement import Snapshot, plan

__all__ = ["Reconciler", "read_snapshot", "read_load", "read_decisions"]

# A gateway's load report older than this many report intervals (and at least
# LOAD_STALE_MIN_S) is ignored: the gateway is gone, or idle and silent.
LOAD_STALE_INTERVALS = 3.0
LOAD_STALE_MIN_S = 3.0
# A decision whose reason alone changed (the numbers in it) is rewritten at most this often.
DECISION_REFRESH_S = 10.0

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


async def read_load(store: Store, now: float | None = None) -> dict[str, ModelLoad]:
    """Per model, the load of all gateways summed over their fresh reports."""
    now = time.time() if now is None else now
    _, kvs = await store.list(KEYS.LOAD)
    out: dict[str, ModelLoad] = {}
    for kv in kvs:
        try:
            rep = from_json(LoadReport, kv.value)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed load report at %s", kv.key)
            continue
        if now - rep.at > max(LOAD_STALE_INTERVALS * rep.interval_s, LOAD_STALE_MIN_S):
            continue
        for model, ml in rep.models.items():
            acc = out.get(model)
            out[model] = ml if acc is None else ModelLoad(
                acc.in_flight + ml.in_flight, acc.peak_in_flight + ml.peak_in_flight, acc.held + ml.held,
                acc.requests + ml.requests, max(acc.last_request_at, ml.last_request_at))
    return out


async def read_decisions(store: Store) -> dict[str, AutoscaleDecision]:
    """The autoscaler's latest decision per model, as the leader wrote them."""
    _, kvs = await store.list(KEYS.AUTOSCALE)
    out = {}
    for kv in kvs:
        try:
            d = from_json(AutoscaleDecision, kv.value)
        except (ValueError, KeyError, TypeError):
            continue
        out[d.model] = d
    return out


class Reconciler:
    def __init__(self, store: Store, leadership: Leadership, resync_s: float = 5.0, tick_s: float = 1.0) -> None:
        self.store = store
        self.leadership = leadership
        self.resync_s = resync_s
        self.tick_s = tick_s    # the loop also runs this often without store changes (autoscaler)
        # Autoscaler state, per model, kept by the leader only: recent load samples,
        # the core's memory, and the last decision written to the store.
        self._history: dict[str, deque[Sample]] = {}
        self._memory: dict[str, Memory] = {}
        self._written: dict[str, tuple[int, bool, str, str, float]] = {}
        self.decisions: dict[str, AutoscaleDecision] = {}
        self._changes = ChangeWatcher(store, "mesh/", KEYS.SERVICE, resync_s)
        self.last_reasons: dict[str, tuple[str, ...]] = {}
        # The last state this leader saw, to put back if the store loses it
        # (a Consul agent restarted in -dev mode, a server cluster rebuilt).
        self._cluster_id: bytes | None = None
        self._seen: dict[str, bytes] = {}

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self._changes.reset()

    async def _run(self) -> None:
        while True:
            try:
                # Every scheduler, leader or not, keeps a copy of the desired state
                # and puts it back if the store loses it; only the leader plans.
                await self._guard_against_store_reset()
                if not self.leadership.is_leader:
                    self._forget_autoscale()
                    self.leadership.changed.clear()
                    try:
                        await asyncio.wait_for(self.leadership.changed.wait(), self.resync_s)
                    except asyncio.TimeoutError:
                        pass
                    self._changes.reset()
                    continue
                await self.reconcile_once()
                # A store or health change, or the tick (the autoscaler runs on time too).
                await self._changes.wait(self.tick_s)
            except StoreError as exc:
                log.error("scheduler cannot reach the store: %s; retrying in 1s", exc)
                self._changes.reset()
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
        snap = await self._autoscale(snap)
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

    # -- autoscaling ------------------------------------------------------------------
    def _forget_autoscale(self) -> None:
        """Not the leader: drop the autoscaler's state; a new term restores it from the store."""
        self._history.clear()
        self._memory.clear()
        self._written.clear()

    async def _autoscale(self, snap: Snapshot) -> Snapshot:
        """Sample the gateways' load, run the autoscaler for every model, write changed
        decisions; returns the snapshot with the desired counts, the load and the time."""
        now = time.time()
        load = await read_load(self.store, now)
        _, dec_kvs = await self.store.list(KEYS.AUTOSCALE)
        stored = {kv.key[len(KEYS.AUTOSCALE):]: kv for kv in dec_kvs}
        desired: dict[str, int] = {}
        for name in sorted(snap.specs):
            spec = snap.specs[name]
            a = spec.autoscaling
            ml = load.get(name, ModelLoad())
            hist = self._history.setdefault(name, deque())
            # At most two samples a second (the loop also runs on every store change);
            # a loop sooner than that refreshes the last sample with the newest load.
            sample = Sample(now, ml.in_flight, ml.held, ml.last_request_at)
            if hist and now - hist[-1].at < 0.5:
                hist[-1] = dataclasses.replace(sample, at=hist[-1].at)
            else:
                hist.append(sample)
            keep = max(a.stable_window_s, a.panic_window_s) + 2.0
            while hist and hist[0].at < now - keep:
                hist.popleft()
            pl = snap.placements.get(name)
            current = sum(1 for r in (pl.replicas if pl else ()) if r.role != "draining")
            mem = self._memory.get(name)
            if mem is None and name in stored:
                try:
                    old = from_json(AutoscaleDecision, stored[name].value)
                    mem = Memory(desired=old.desired, active_at=now)
                    self._written[name] = (old.desired, old.panic, "", old.reason, old.at)
                except (ValueError, KeyError, TypeError):
                    mem = None
            out = decide(spec, current, hist, now, mem)
            self._memory[name] = out.memory
            desired[name] = out.decision.desired
            self.decisions[name] = out.decision
            await self._write_decision(name, out.decision, out.rule, stored.get(name))
        for name in [m for m in self._history if m not in snap.specs]:
            self._history.pop(name, None)
            self._memory.pop(name, None)
            self._written.pop(name, None)
            self.decisions.pop(name, None)
        for name, kv in stored.items():
            if name not in snap.specs:
                await self.store.delete(KEYS.autoscale(name), cas=kv.modify_index)
        return dataclasses.replace(snap, desired=desired, now=now, load=load)

    async def _write_decision(self, name: str, d: AutoscaleDecision, rule: str, old: KV | None) -> None:
        last = self._written.get(name)
        if last is not None:
            l_desired, l_panic, l_rule, l_reason, l_at = last
            same = (l_desired, l_panic, l_rule) == (d.desired, d.panic, rule)
            if same and (l_reason == d.reason or d.at - l_at < DECISION_REFRESH_S):
                return
        if last is None or (last[0], last[1]) != (d.desired, d.panic):
            log.info("%s: autoscaler: %d replica(s): %s", name, d.desired, d.reason)
        if await self.store.put(KEYS.autoscale(name), to_json(d), cas=old.modify_index if old else 0):
            self._written[name] = (d.desired, d.panic, rule, d.reason, d.at)
