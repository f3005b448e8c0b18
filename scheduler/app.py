"""The scheduler process: leader election, the reconciler, and the control API."""
from __future__ import annotations

import asyncio
import logging

import grpc

from mesh.store import Store
from meshproto import control_pb2_grpc as cpb_grpc
from scheduler.leader import Leadership
from scheduler.reconciler import Reconciler
from scheduler.service import SchedulerService

__all__ = ["SchedulerApp", "DEFAULT_CONTROL_PORT"]

log = logging.getLogger(__name__)
DEFAULT_CONTROL_PORT = 8010


class SchedulerApp:
    def __init__(self, store: Store, identity: str, host: str = "127.0.0.1",
                 port: int = DEFAULT_CONTROL_PORT, lock_ttl_s: float = 10.0, lock_delay_s: float = 1.0) -> None:
        self.store = store
        self.leadership = Leadership(store, identity, ttl_s=lock_ttl_s, lock_delay_s=lock_delay_s,
                                     address=host, port=port)
        self.reconciler = Reconciler(store, self.leadership)
        self.host = host
        self.port = port
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._server = grpc.aio.server()
        cpb_grpc.add_SchedulerServicer_to_server(SchedulerService(self.store), self._server)
        bound = self._server.add_insecure_port(f"{self.host}:{self.port}")
        if bound == 0:
            raise OSError(f"scheduler cannot bind control port {self.host}:{self.port} (in use?)")
        self.port = bound
        await self._server.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.leadership.run()), loop.create_task(self.reconciler.run())]
        log.info("scheduler %s control API on %s:%d", self.leadership.identity, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(2.0)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        await self.leadership.resign()
