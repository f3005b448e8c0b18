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
from mesh.types import KEYS, ModelSpec, NodeInfo, ReplicaStatus, from_json, to_json
from meshproto import control_pb2 as cpb
from meshproto import control_pb2_grpc as cpb_grpc
from scheduler.reconciler import read_snapshot

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
            gen = (from_json(ModelSpec, old.value).generation if old else 0) + 1
            new = dataclasses.replace(spec, generation=gen)
            if await self.store.put(KEYS.model(spec.name), to_json(new), cas=old.modify_index if old else 0):
                log.info("applied %s (generation %d, %d..%d replicas, %s)", spec.name, gen,
                         spec.min_replicas, spec.max_replicas, spec.storage_uri)
                return cpb.ApplyResponse(model=spec.name, created=old is None, generation=gen)

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


async def model_views(store: Store) -> list[cpb.ModelView]:
    snap, _ = await read_snapshot(store)
    _, status_kvs = await store.list(KEYS.STATUS)
    statuses: dict[tuple[str, str], ReplicaStatus] = {}
    for kv in status_kvs:
        st = from_json(ReplicaStatus, kv.value)
        statuses[(st.node, st.model)] = st
    views = []
    for name in sorted(snap.specs):
        spec = snap.specs[name]
        pl = snap.placements.get(name)
        replicas = []
        for r in (pl.replicas if pl else ()):
            st = statuses.get((r.node, name))
            state = st.state if st and st.version == r.version else "pending"
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
    return views
