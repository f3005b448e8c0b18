"""The inference core: transport-free routing of KServe v2 calls to replicas.

The gRPC servicer and the HTTP bridge are thin adapters over this class. ModelInfer
bodies travel as the bytes the client sent: the core reads only ``model_name``
(a wire scan, no parse) and forwards the same bytes to the chosen Triton, except for
models whose spec turns on gateway-side batching: those go through ``gateway.batcher``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import grpc

from fastpath.errors import WireError
from fastpath.wire import scan_model
from gateway.batcher import Batcher
from gateway.loadreport import LoadReporter
from gateway.metrics import GatewayMetrics
from gateway.routing import Endpoint, RoutingTable
from gateway.upstream import UpstreamPool
from mesh.errors import GRPC_TO_HTTP, InvalidInput, MeshError, ModelNotFound, NoReadyReplica, Overloaded
from mesh.types import BatchingSpec
from meshproto import inference_pb2 as pb

__all__ = ["InferenceCore", "UpstreamStatus"]

log = logging.getLogger(__name__)
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


class UpstreamStatus(MeshError):
    """Triton answered with an error: its status and message are passed on as they are."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.grpc_code = code
        self.http_status = GRPC_TO_HTTP.get(code, 500)


class InferenceCore:
    def __init__(self, routing: RoutingTable, upstream: UpstreamPool, metrics: GatewayMetrics,
                 load: LoadReporter | None = None, max_held: int = 256, hold_timeout_s: float = 60.0) -> None:
        self.routing = routing
        self.upstream = upstream
        self.metrics = metrics
        # Per-model load counters (the autoscaler's input) and the scale-from-zero hold queue:
        # a request for a deployed model with no ready replica waits here, up to `max_held`
        # per model and `hold_timeout_s` (or its deadline), for a replica to become ready.
        self.load = load
        self.max_held = max_held
        self.hold_timeout_s = hold_timeout_s
        self._http: aiohttp.ClientSession | None = None
        # (model, protocol) -> (requests counter, in-flight gauge, latency histogram) children:
        # prometheus' labels() lookup is too slow to repeat on every request.
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._held: dict[str, int] = {}
        self.batcher = Batcher(self._send_infer, metrics, pb.ModelInferRequest, pb.ModelInferResponse)

    # -- inference -------------------------------------------------------------
    async def infer_raw(self, body: bytes, timeout: float | None, protocol: str = "grpc") -> bytes:
        """Serialized ModelInferRequest in, serialized ModelInferResponse out."""
        try:
            model, _version = scan_model(body)
        except WireError as exc:
            raise InvalidInput(f"malformed ModelInferRequest: {exc}") from exc
        if not model:
            raise InvalidInput("ModelInferRequest has no model_name")
        spec = self.routing.specs.get(model)
        if spec is not None and spec.batching is not None:
            out = await self._forward(model, body, timeout, protocol, spec.batching)
            return out if type(out) is bytes else out.SerializeToString()  # type: ignore[union-attr]
        return await self._forward(model, body, timeout, protocol)  # type: ignore[return-value]

    async def infer(self, req: pb.ModelInferRequest, timeout: float | None, protocol: str = "http"
                    ) -> pb.ModelInferResponse:
        model = req.model_name
        spec = self.routing.specs.get(model)
        if spec is not None and spec.batching is not None:
            out = await self._forward(model, None, timeout, protocol, spec.batching, req)
        else:
            out = await self._forward(model, req.SerializeToString(), timeout, protocol)
        if type(out) is bytes:
            return pb.ModelInferResponse.FromString(out)
        return out  # type: ignore[return-value]

    def _metric_children(self, model: str, protocol: str) -> tuple[Any, Any, Any]:
        m = self.metrics
        if len(self._children) > 4096:  # unknown model names must not grow this forever
            self._children.clear()
        c = self._children[(model, protocol)] = (
            m.requests.labels(model, protocol), m.in_flight.labels(model), m.latency.labels(model, protocol))
        return c

    async def _forward(self, model: str, body: bytes | None, timeout: float | None, protocol: str,
                       batching: BatchingSpec | None = None, req: pb.ModelInferRequest | None = None
                       ) -> bytes | pb.ModelInferResponse:
        """One ModelInfer, counted in the metrics: sent as is, or through the batcher."""
        c = self._children.get((model, protocol)) or self._metric_children(model, protocol)
        c[0].inc()
        gauge = c[1]
        gauge.inc()
        t0 = time.perf_counter()
        load = self.load
        ctr = None
        if load is not None and model in self.routing.specs:  # only deployed models are counted
            ctr = load.counters.get(model) or load.counter(model)
            ctr.in_flight += 1
            ctr.requests += 1
        try:
            route = self.routing.routes.get(model)
            if route is not None and not route.endpoints and not route.draining and model in self.routing.specs:
                timeout = await self._hold(model, timeout, ctr)
            if batching is None:
                return await self._call_with_retry(model, "ModelInfer", body, timeout)  # type: ignore[arg-type]
            return await self.batcher.submit(model, batching, req, body, timeout)
        except MeshError as exc:
            self.metrics.errors.labels(model, protocol, exc.grpc_code.name).inc()
            raise
        finally:
            gauge.dec()
            if ctr is not None:
                ctr.in_flight -= 1
            c[2].observe(time.perf_counter() - t0)

    async def _hold(self, model: str, timeout: float | None, ctr: Any) -> float | None:
        """Wait for a first ready replica of a deployed model (scale from zero, or replicas
        still loading); returns what is left of the request's timeout."""
        held = self._held.get(model, 0)
        if held >= self.max_held:
            raise Overloaded(f"model '{model}' has no ready replica and {held} requests already wait for one "
                             f"(the hold queue is full); retry later")
        self._held[model] = held + 1
        if ctr is not None:
            ctr.held += 1
        t0 = time.monotonic()
        wait = self.hold_timeout_s if timeout is None else min(timeout, self.hold_timeout_s)
        try:
            while True:
                route = self.routing.routes.get(model)
                if route is None or model not in self.routing.specs:
                    raise ModelNotFound(f"model '{model}' was deleted while the request waited for a replica")
                if route.endpoints or route.draining:
                    waited = time.monotonic() - t0
                    self.metrics.held.labels(model).observe(waited)
                    return None if timeout is None else max(timeout - waited, 0.001)
                left = wait - (time.monotonic() - t0)
                if left <= 0:
                    what = "is scaling from zero" if route.expected == 0 else "has no ready replica"
                    raise NoReadyReplica(f"model '{model}' {what}: no replica ready after {wait:g}s "
                                         f"({route.why_none})")
                # The routing table refreshes on store changes; a short poll keeps this
                # path independent of it and costs nothing on the hot path.
                await asyncio.sleep(min(0.05, left))
        finally:
            n = self._held[model] - 1
            if n:
                self._held[model] = n
            else:
                del self._held[model]
            if ctr is not None:
                ctr.held -= 1

    async def _send_infer(self, model: str, body: bytes, timeout: float | None) -> bytes:
        """The batcher's upstream path: the same replica choice and retry as unbatched requests."""
        return await self._call_with_retry(model, "ModelInfer", body, timeout)

    async def _call_with_retry(self, model: str, method: str, body: bytes, timeout: float | None) -> bytes:
        deadline = None if timeout is None else time.monotonic() + timeout
        ep = self._pick(model)
        try:
            return await self._call(ep, method, body, timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _RETRYABLE:
                raise UpstreamStatus(exc.code(), exc.details() or "") from exc
            first = exc
        # One retry on another replica, within what is left of the deadline.
        route = self.routing.route(model)
        other = route.pick(exclude=ep.node) if route else None
        remaining = None if deadline is None else deadline - time.monotonic()
        if other is None or (remaining is not None and remaining <= 0):
            raise UpstreamStatus(grpc.StatusCode.UNAVAILABLE,
                                 f"replica of {model!r} on {ep.node} ({ep.address}) is unavailable: "
                                 f"{first.details()}") from first
        self.metrics.retries.labels(model).inc()
        log.warning("retrying %s for %s on %s after UNAVAILABLE from %s", method, model, other.node, ep.node)
        try:
            return await self._call(other, method, body, remaining)
        except grpc.aio.AioRpcError as exc:
            raise UpstreamStatus(exc.code(), exc.details() or "") from exc

    async def _call(self, ep: Endpoint, method: str, body: bytes, timeout: float | None) -> bytes:
        ep.outstanding += 1
        try:
            return await self.upstream.raw(ep.address, method)(body, timeout=timeout)
        finally:
            ep.outstanding -= 1

    def _pick(self, model: str) -> Endpoint:
        route = self.routing.route(model)
        if route is None:
            known = ", ".join(sorted(self.routing.routes)) or "none"
            raise ModelNotFound(f"unknown model '{model}': it is not deployed (deployed: {known})")
        ep = route.pick()
        if ep is None:
            raise NoReadyReplica(f"model '{model}' has no ready replica ({len(route.endpoints)}/"
                                 f"{route.expected} ready): {route.why_none}")
        return ep

    # -- metadata, forwarded to any ready replica -------------------------------
    async def forward_model_call(self, model: str, method: str, body: bytes, timeout: float | None) -> bytes:
        ep = self._pick(model)
        try:
            return await self._call(ep, method, body, timeout)
        except grpc.aio.AioRpcError as exc:
            raise UpstreamStatus(exc.code(), exc.details() or "") from exc

    async def model_ready(self, model: str, version: str, timeout: float | None) -> bool:
        route = self.routing.route(model)
        if route is None or not route.endpoints:
            return False
        body = pb.ModelReadyRequest(name=model, version=version).SerializeToString()
        try:
            raw = await self.forward_model_call(model, "ModelReady", body, timeout)
        except MeshError:
            return False
        return pb.ModelReadyResponse.FromString(raw).ready

    async def model_config_json(self, model: str, version: str, timeout: float | None) -> tuple[int, bytes]:
        ep = self._pick(model)
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/config"
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            async with self._http.get(f"http://{ep.http_address}{path}",
                                      timeout=aiohttp.ClientTimeout(total=timeout or 30)) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise UpstreamStatus(grpc.StatusCode.UNAVAILABLE,
                                 f"replica of {model!r} on {ep.node} ({ep.http_address}) did not answer: {exc!r}"
                                 ) from exc

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def repository_index(self, ready_only: bool) -> pb.RepositoryIndexResponse:
        out = pb.RepositoryIndexResponse()
        for name in sorted(self.routing.routes):
            route = self.routing.routes[name]
            ready = bool(route.endpoints)
            if ready_only and not ready:
                continue
            out.models.add(name=name, state="READY" if ready else "UNAVAILABLE",
                           reason="" if ready else route.why_none)
        return out

    def server_ready(self) -> bool:
        return self.routing.synced.is_set()
