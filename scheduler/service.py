"""The control API (mesh.control.v1.Scheduler): a thin adapter over the store.

Every call only reads or writes the store, so any scheduler replica, leader or
not, can answer it; the leader's reconciler turns specs into placements.
"""
from __future__ import annotations

import dataclasses
import logging

import grpc

from mesh.errors import SpecError
from mesh.spec import parse_spec
from mesh.store import Store
from mesh.types import KEYS, ModelSpec, NodeInfo, Placement, ReplicaStatus, from_json, to_json
from meshproto import control_pb2 as cpb
from meshproto import control_pb2_grpc as cpb_grpc
from scheduler.reconciler import read_decisions, read_load, read_snapshot

__all__ = ["SchedulerService", "model_views"]

log = logging.getLogger(__name__)


class SchedulerService(cpb_grpc.SchedulerServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    async def Apply(self, request: cpb.ApplyRequest, context: grpc.aio.ServicerContext) -> cpb.ApplyResponse:
        try:
            spec = parse_spec(request.spec)
        except SpecError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid spec: {exc}")
        while True:
            old = await self.store.get(KEYS.model(spec.name))
            prev = from_json(ModelSpec, old.value) if old else None
            gen = (prev.generation if prev else 0) + 1
            new = dataclasses.replace(spec, generation=gen)
            if prev is not None and prev.version != new.version:
                await self._remember_stable(prev)
            if await self.store.put(KEYS.model(spec.name), to_json(new), cas=old.modify_index if old else 0):
                log.info("applied %s (generation %d, %d..%d replicas, %s)", spec.name, gen,
                         spec.min_replicas, spec.max_replicas, spec.storage_uri)
                return cpb.ApplyResponse(model=spec.name, created=old is None, generation=gen)

    async def _remember_stable(self, prev: ModelSpec) -> None:
        """Keep the spec being rolled away from: agents load its version for stable
        replicas during a canary, and `rollback` re-applies it. A rollout that
        starts before the last one finished keeps the older stable spec."""
        kv = await self.store.get(KEYS.rollout(prev.name))
        if kv is not None:
            stable = from_json(ModelSpec, kv.value)
            pl = await self.store.get(KEYS.placement(prev.name))
            if pl is not None and any(r.version == stable.version for r in from_json(Placement, pl.value).replicas):
                return
        await self.store.put(KEYS.rollout(prev.name), to_json(prev))

    async def Rollout(self, request: cpb.RolloutRequest, context: grpc.aio.ServicerContext) -> cpb.RolloutResponse:
        if request.action not in ("status", "promote", "rollback"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"rollout action must be status, promote or rollback, got {request.action!r}")
        kv = await self.store.get(KEYS.model(request.model))
        if kv is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r} is not deployed")
        spec = from_json(ModelSpec, kv.value)
        stable_kv = await self.store.get(KEYS.rollout(request.model))
        stable = from_json(ModelSpec, stable_kv.value) if stable_kv else None
        status = await rollout_view(self.store, spec, stable)
        if request.action == "promote":
            if status.phase != "canary":
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"model {request.model!r} has no canary to promote (phase {status.phase})")
            new = dataclasses.replace(spec, canary_traffic_percent=None, generation=spec.generation + 1)
            if not await self.store.put(KEYS.model(spec.name), to_json(new), cas=kv.modify_index):
                await context.abort(grpc.StatusCode.ABORTED, "the spec changed meanwhile; try again")
            status.message = f"promoted version {spec.version}: rolling the stable replicas to it"
        elif request.action == "rollback":
            if stable is None or stable.version == spec.version:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"model {request.model!r} has no earlier version to roll back to")
            back = dataclasses.replace(stable, canary_traffic_percent=None, generation=spec.generation + 1)
            if not await self.store.put(KEYS.model(spec.name), to_json(back), cas=kv.modify_index):
                await context.abort(grpc.StatusCode.ABORTED, "the spec changed meanwhile; try again")
            await self.store.put(KEYS.rollout(spec.name), to_json(spec))
            status.message = f"rolling back from {spec.version} to {stable.version}"
        return status

    async def Delete(self, request: cpb.DeleteRequest, context: grpc.aio.ServicerContext) -> cpb.DeleteResponse:
        if await self.store.get(KEYS.model(request.model)) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r} is not deployed")
        await self.store.delete(KEYS.model(request.model))
        return cpb.DeleteResponse(deleted=True)

    async def Scale(self, request: cpb.ScaleRequest, context: grpc.aio.ServicerContext) -> cpb.ScaleResponse:
        while True:
            old = await self.store.get(KEYS.model(request.model))
            if old is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r} is not deployed")
            spec = from_json(ModelSpec, old.value)
            lo, hi = request.min_replicas, request.max_replicas or max(request.min_replicas, spec.max_replicas)
            if lo < 0 or hi < max(lo, 1):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"replicas: need 0 <= min <= max and max >= 1, got min={lo} max={hi}")
            new = dataclasses.replace(spec, min_replicas=lo, max_replicas=hi, generation=spec.generation + 1)
            if await self.store.put(KEYS.model(request.model), to_json(new), cas=old.modify_index):
                return cpb.ScaleResponse(generation=new.generation)

    async def GetModels(self, request: cpb.GetModelsRequest, context: grpc.aio.ServicerContext) -> cpb.GetModelsResponse:
        views = await model_views(self.store)
        if request.name:
            views = [v for v in views if v.name == request.name]
            if not views:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name!r} is not deployed")
        return cpb.GetModelsResponse(models=views)

    async def GetNodes(self, request: cpb.GetNodesRequest, context: grpc.aio.ServicerContext) -> cpb.GetNodesResponse:
        snap, _ = await read_snapshot(self.store)
        out = []
        for node_id in sorted(snap.nodes):
            n: NodeInfo = snap.nodes[node_id]
            models = sorted(m for m, pl in snap.placements.items() if any(r.node == node_id for r in pl.replicas))
            cpu = sum(snap.specs[m].resources.cpu_millis for m in models if m in snap.specs)
            mem = sum(snap.specs[m].resources.memory_bytes for m in models if m in snap.specs)
            out.append(cpb.NodeView(
                node_id=node_id, address=n.address, healthy=node_id in snap.healthy, cordoned=n.cordoned,
                cpu_millis=n.capacity.cpu_millis, memory_bytes=n.capacity.memory_bytes,
                gpu_count=n.capacity.gpu_count, gpu_memory_bytes=n.capacity.gpu_memory_bytes,
                used_cpu_millis=cpu, used_memory_bytes=mem, models=models))
        return cpb.GetNodesResponse(nodes=out)


async def rollout_view(store: Store, spec: ModelSpec, stable: ModelSpec | None) -> cpb.RolloutResponse:
    views = [v for v in await model_views(store) if v.name == spec.name]
    replicas = list(views[0].replicas) if views else []
    old = [r for r in replicas if r.version != spec.version]
    new_ready = sum(1 for r in replicas if r.version == spec.version and r.state == "ready")
    if old and spec.canary_traffic_percent is not None:
        phase = "canary"
    elif old or new_ready < len(replicas) or any(r.role == "draining" for r in replicas):
        phase = "rolling"
    else:
        phase = "complete" if stable is not None else "idle"
    return cpb.RolloutResponse(
        model=spec.name, phase=phase, stable_version=stable.version if stable else spec.version,
        new_version=spec.version, canary_traffic_percent=spec.canary_traffic_percent or 0,
        replicas_total=len(replicas), replicas_new_ready=new_ready, replicas_old=len(old), replicas=replicas)


async def model_views(store: Store) -> list[cpb.ModelView]:
    snap, _ = await read_snapshot(store)
    _, status_kvs = await store.list(KEYS.STATUS)
    statuses: dict[tuple[str, str], ReplicaStatus] = {}
    for kv in status_kvs:
        st = from_json(ReplicaStatus, kv.value)
        statuses[(st.node, st.model)] = st
    decisions = await read_decisions(store)
    load = await read_load(store)
    views = []
    for name in sorted(snap.specs):
        spec = snap.specs[name]
        pl = snap.placements.get(name)
        replicas = []
        for r in (pl.replicas if pl else ()):
            st = statuses.get((r.node, name))
            if st is None:
                state = "pending"
            elif st.version != r.version:
                state = "updating" if st.state == "ready" else "pending"  # serving the old version meanwhile
            else:
                state = st.state
            if state == "ready" and r.node not in snap.healthy:
                state = "unhealthy"
            replicas.append(cpb.ReplicaView(replica_id=r.replica_id, node=r.node, version=r.version,
                                            role=r.role, state=state, error=st.error if st else ""))
        views.append(cpb.ModelView(
            name=name, min_replicas=spec.min_replicas, max_replicas=spec.max_replicas,
            desired_replicas=len(pl.replicas) + len(pl.unplaced) if pl else spec.min_replicas,
            ready_replicas=sum(1 for r in replicas if r.state == "ready"),
            replicas=replicas, unplaced_reasons=list(pl.unplaced) if pl else [],
            storage_uri=spec.storage_uri, generation=spec.generation))
        _autoscale_fields(views[-1], spec, decisions.get(name), load.get(name))
    return views


def _autoscale_fields(view: cpb.ModelView, spec: ModelSpec, decision, load) -> None:  # type: ignore[no-untyped-def]
    a = spec.autoscaling
    view.autoscaling.CopyFrom(cpb.AutoscalingView(
        metric=a.metric, target=a.target, stable_window_s=a.stable_window_s, panic_window_s=a.panic_window_s,
        panic_threshold=a.panic_threshold, scale_down_delay_s=a.scale_down_delay_s, idle_timeout_s=a.idle_timeout_s))
    if decision is not None:
        view.autoscale_desired = decision.desired
        view.autoscale_reason = decision.reason
        view.panic = decision.panic
        view.autoscale_at = decision.at
    if load is not None:
        view.in_flight = load.in_flight
        view.held = load.held
