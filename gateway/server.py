"""Assembles the gateway: routing table, upstream pool, core, gRPC + HTTP front ends."""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field

import grpc
from aiohttp import web

from gateway.core import InferenceCore
from gateway.grpc_server import build_grpc_handler
from gateway.http_bridge import build_http_app, build_metrics_app
from gateway.loadreport import LoadReporter
from gateway.metrics import GatewayMetrics
from gateway.routing import RoutingTable
from gateway.upstream import UpstreamPool
from mesh.store import Store

__all__ = ["GatewayConfig", "Gateway"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int | None = 8002   # None: /metrics only on the HTTP port
    max_message_bytes: int = 64 * 1024 * 1024
    http_timeout_s: float | None = 60.0
    shutdown_grace_s: float = 5.0
    gateway_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    load_sample_s: float = 0.2        # in-flight sampling period
    load_report_s: float = 1.0        # load report period (mesh/load/<gateway_id>)
    max_held: int = 256               # per model, requests waiting for a first ready replica
    hold_timeout_s: float = 60.0      # longest wait for one (or the request deadline)


class Gateway:
    def __init__(self, cfg: GatewayConfig, store: Store) -> None:
        self.cfg = cfg
        self.metrics = GatewayMetrics()
        self.routing = RoutingTable(store)
        self.upstream = UpstreamPool(cfg.max_message_bytes)
        self.load = LoadReporter(store, cfg.gateway_id, lambda: self.routing.specs,
                                 sample_s=cfg.load_sample_s, report_s=cfg.load_report_s)
        self.core = InferenceCore(self.routing, self.upstream, self.metrics, self.load,
                                  max_held=cfg.max_held, hold_timeout_s=cfg.hold_timeout_s)
        self._grpc: grpc.aio.Server | None = None
        self._runners: list[web.AppRunner] = []
        self.grpc_port = cfg.grpc_port
        self.http_port = cfg.http_port
        self.metrics_port = cfg.metrics_port

    async def start(self) -> None:
        await self.routing.start()
        await self.load.start()
        opts = [("grpc.max_receive_message_length", self.cfg.max_message_bytes),
                ("grpc.max_send_message_length", self.cfg.max_message_bytes),
                ("grpc.so_reuseport", 0)]
        self._grpc = grpc.aio.server(options=opts)
        self._grpc.add_generic_rpc_handlers((build_grpc_handler(self.core),))
        self.grpc_port = self._grpc.add_insecure_port(f"{self.cfg.host}:{self.cfg.grpc_port}")
        if self.grpc_port == 0:
            raise OSError(f"gateway cannot bind gRPC port {self.cfg.host}:{self.cfg.grpc_port} (in use?)")
        await self._grpc.start()
        app = build_http_app(self.core, self.metrics, self.cfg.max_message_bytes, self.cfg.http_timeout_s)
        self.http_port = await self._serve_http(app, self.cfg.http_port)
        if self.cfg.metrics_port is not None:
            self.metrics_port = await self._serve_http(build_metrics_app(self.metrics), self.cfg.metrics_port)
        log.info("gateway serving KServe v2 gRPC on %s:%d, HTTP on %s:%d, metrics on %s:%s",
                 self.cfg.host, self.grpc_port, self.cfg.host, self.http_port, self.cfg.host,
                 self.metrics_port)

    async def _serve_http(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.cfg.host, port, reuse_port=False)
        await site.start()
        self._runners.append(runner)
        server = site._server  # aiohttp keeps the bound socket here
        return int(server.sockets[0].getsockname()[1]) if server and server.sockets else port

    async def stop(self) -> None:
        # Stop taking requests, let in-flight ones finish, drain the batcher, then close upstreams.
        if self._grpc is not None:
            await self._grpc.stop(self.cfg.shutdown_grace_s)
        for runner in self._runners:
            await runner.cleanup()
        await self.core.batcher.drain()   # flush queued batches, wait for their answers
        await self.load.stop()
        await self.routing.stop()
        await self.core.close()
        await self.upstream.close()
