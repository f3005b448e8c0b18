"""The node agent: one per host. Supervises Triton, loads what the scheduler
placed here, reports replica status, and keeps the host registered and healthy.

    store: mesh/placements/*  --watch-->  agent  --RepositoryModelLoad-->  tritonserver
    agent  --put-->  mesh/status/<node>/<model>, mesh/nodes/<node>; TTL heartbeats
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc

from mesh.store import ServiceRegistration, Store, StoreError
from mesh.types import KEYS, ModelSpec, NodeInfo, Placement, ReplicaStatus, Resources, from_json, to_json
from meshproto import inference_pb2 as pb
from meshproto import inference_pb2_grpc as pb_grpc
from node_agent.artifacts import ArtifactError, install_model, remove_model
from node_agent.triton import TritonConfig, TritonProcess

__all__ = ["AgentConfig", "NodeAgent"]

log = logging.getLogger(__name__)
_RETRY_FAILED_S = 30.0


@dataclass(frozen=True)
class AgentConfig:
    node_id: str
    work_dir: Path
    host: str = "127.0.0.1"
    advertise: str = ""         # address others reach this host at (default: host; needed with 0.0.0.0)
    capacity: Resources = field(default_factory=Resources)
    labels: dict[str, str] = field(default_factory=dict)
    triton: TritonConfig | None = None
    heartbeat_s: float = 1.0
    # A replica taken off this node is marked unloading at once (gateways stop
    # routing to it) and unloaded after this grace, so no request meets a vanished model.
    unload_grace_s: float = 2.0
    ttl_s: float = 10.0
    deregister_after_s: float | None = 120.0
    agent_address: str = ""


@dataclass
class _Loaded:
    version: str
    state: str          # loading | ready | failed
    error: str = ""
    at: float = 0.0


class NodeAgent:
    def __init__(self, cfg: AgentConfig, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        tcfg = cfg.triton or TritonConfig(work_dir=cfg.work_dir / "triton", host=cfg.host)
        self.triton = TritonProcess(tcfg, on_restart=self._on_triton_restart)
        self._models: dict[str, _Loaded] = {}
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.GRPCInferenceServiceStub | None = None
        self.cordoned = False
        self.draining = False
        self._unload_after: dict[str, float] = {}

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        await self.triton.start()
        self._channel = grpc.aio.insecure_channel(self.triton.grpc_address)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        existing = await self.store.get(KEYS.node(self.cfg.node_id))
        if existing is not None:  # keep an operator's cordon/drain across agent restarts
            old = from_json(NodeInfo, existing.value)
            self.cordoned, self.draining = old.cordoned, old.draining
        # A fresh tritonserver has nothing loaded: statuses left by an earlier run of
        # this node (a crash, a host reboot) must not make gateways route here.
        await self.store.delete_prefix(f"{KEYS.STATUS}{self.cfg.node_id}/")
        await self._register()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat()), loop.create_task(self._reconcile_loop())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001  (shutting down)
                pass
        try:
            await self.store.deregister_service(self.cfg.node_id)
            await self.store.delete_prefix(f"{KEYS.STATUS}{self.cfg.node_id}/")
        except StoreError as exc:
            log.warning("could not deregister node %s on shutdown: %s", self.cfg.node_id, exc)
        if self._channel is not None:
            await self._channel.close()
        await self.triton.stop()

    @property
    def advertised(self) -> str:
        return self.cfg.advertise or self.cfg.host

    def node_info(self) -> NodeInfo:
        return NodeInfo(
            node_id=self.cfg.node_id, address=f"{self.advertised}:{self.triton.grpc_port}",
            http_address=f"{self.advertised}:{self.triton.http_port}", capacity=self.cfg.capacity,
            labels=dict(self.cfg.labels), cordoned=self.cordoned, agent_address=self.cfg.agent_address,
            draining=self.draining,
        )

    async def set_cordon(self, cordoned: bool, draining: bool = False) -> None:
        """Cordon: no new replicas here. Drain: also move the ones here away."""
        self.cordoned, self.draining = cordoned or draining, draining
        await self.store.put(KEYS.node(self.cfg.node_id), to_json(self.node_info()))

    def replica_states(self) -> dict[str, tuple[str, str, str]]:
        return {m: (s.version, s.state, s.error) for m, s in self._models.items()}

    # -- registration and health ---------------------------------------------
    async def _register(self) -> None:
        await self.store.put(KEYS.node(self.cfg.node_id), to_json(self.node_info()))
        await self.store.register_service(ServiceRegistration(
            service_id=self.cfg.node_id, name=KEYS.SERVICE, address=self.advertised,
            port=self.triton.grpc_port,
            meta={"http": f"{self.advertised}:{self.triton.http_port}", "agent": self.cfg.agent_address},
            ttl_s=self.cfg.ttl_s, deregister_critical_after_s=self.cfg.deregister_after_s,
            http_check_url=f"http://{self.advertised}:{self.triton.http_port}/v2/health/ready",
            http_check_interval_s=max(0.5, self.cfg.heartbeat_s),
        ))
        await self.store.pass_ttl(self.cfg.node_id)

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self.store.pass_ttl(self.cfg.node_id, "agent alive")
            except StoreError as exc:
                # The store lost us (restart, reaped as critical): register again.
                log.warning("heartbeat for node %s failed (%s); re-registering", self.cfg.node_id, exc)
                try:
                    await self._register()
                    await self._rewrite_statuses()
                except StoreError as exc2:
                    log.error("re-registering node %s failed: %s; retrying", self.cfg.node_id, exc2)
            await asyncio.sleep(self.cfg.heartbeat_s)

    # -- reconcile ---------------------------------------------------------------
    async def _on_triton_restart(self) -> None:
        log.warning("tritonserver restarted on node %s; reloading %d model(s)",
                    self.cfg.node_id, len(self._models))
        for name, st in self._models.items():
            st.state = "loading"
            await self._write_status(name, st)
        self._models.clear()
        self._kick.set()

    async def _reconcile_loop(self) -> None:
        index = 0
        while True:
            try:
                index, kvs = await self.store.watch(KEYS.PLACEMENTS, index,
                                                    timeout=0.5 if self._unload_after else 5.0)
                self._kick.clear()
                await self._reconcile([from_json(Placement, kv.value) for kv in kvs])
            except StoreError as exc:
                log.error("node %s cannot read placements: %s; retrying in 1s", self.cfg.node_id, exc)
                index = 0
                await asyncio.sleep(1.0)
                continue
            if self._kick.is_set():
                index = 0

    async def _reconcile(self, placements: list[Placement]) -> None:
        want: dict[str, str] = {}
        for pl in placements:
            for r in pl.replicas:
                if r.node == self.cfg.node_id:
                    want[pl.model] = r.version
        now = time.monotonic()
        for name in [m for m in self._models if m not in want]:
            st = self._models[name]
            if name not in self._unload_after:
                self._unload_after[name] = now + self.cfg.unload_grace_s
                st.state = "unloading"
                await self._write_status(name, st)
            elif now >= self._unload_after[name]:
                await self._unload(name)
        for name in [m for m in self._unload_after if m in want or m not in self._models]:
            self._unload_after.pop(name, None)
        for name, version in sorted(want.items()):
            cur = self._models.get(name)
            if cur and cur.version == version and (
                    cur.state == "ready" or (cur.state == "failed" and time.time() - cur.at < _RETRY_FAILED_S)):
                continue
            spec = await self._spec_for(name, version)
            if spec is None:
                continue  # the placement is behind the spec; the scheduler will catch up
            await self._load(spec)

    async def _spec_for(self, name: str, version: str) -> ModelSpec | None:
        """The spec of ``version``: the current one, or during a rollout the stable one."""
        for key in (KEYS.model(name), KEYS.rollout(name)):
            kv = await self.store.get(key)
            if kv is not None:
                spec = from_json(ModelSpec, kv.value)
                if spec.version == version:
                    return spec
        return None

    async def _load(self, spec: ModelSpec) -> None:
        cur = self._models.get(spec.name)
        # A reload of a ready model: Triton keeps serving the old version until the
        # new one has loaded, so the replica stays ready (at its old version) meanwhile.
        st = _Loaded(spec.version, "loading", at=time.time())
        if cur is None or cur.state != "ready":
            self._models[spec.name] = st
            await self._write_status(spec.name, st)
        t0 = time.monotonic()
        try:
            await asyncio.to_thread(install_model, spec.storage_uri, self.triton.repository, spec.name)
            assert self._stub is not None
            await self._stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=spec.name), timeout=300)
        except ArtifactError as exc:
            st.state, st.error = "failed", str(exc)
        except grpc.aio.AioRpcError as exc:
            st.state = "failed"
            st.error = f"tritonserver on {self.cfg.node_id} failed to load {spec.name}: {exc.details()}"
        else:
            st.state, st.error = "ready", ""
            self._models[spec.name] = st
            log.info("model %s (version %s) ready on %s in %.2fs", spec.name, spec.version,
                     self.cfg.node_id, time.monotonic() - t0)
        if st.state == "failed":
            log.error("%s", st.error)
            self._models[spec.name] = st
        st.at = time.time()
        await self._write_status(spec.name, st)

    async def _unload(self, name: str) -> None:
        st = self._models.get(name)
        if st is not None:
            st.state = "unloading"
            await self._write_status(name, st)
        try:
            assert self._stub is not None
            await self._stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=name), timeout=60)
        except grpc.aio.AioRpcError as exc:
            log.warning("unloading %s from tritonserver on %s failed: %s", name, self.cfg.node_id, exc.details())
        await asyncio.to_thread(remove_model, self.triton.repository, name)
        self._models.pop(name, None)
        await self.store.delete(KEYS.status(self.cfg.node_id, name))
        log.info("model %s unloaded from %s", name, self.cfg.node_id)

    async def _write_status(self, name: str, st: _Loaded) -> None:
        status = ReplicaStatus(self.cfg.node_id, name, st.version, st.state, st.error, st.at or time.time())
        await self.store.put(KEYS.status(self.cfg.node_id, name), to_json(status))

    async def _rewrite_statuses(self) -> None:
        for name, st in self._models.items():
            await self._write_status(name, replace(st))
