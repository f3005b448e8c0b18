"""Process plumbing shared by the entry points: logging, run-until-signal."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

__all__ = ["setup_logging", "run_components", "Component", "store_url_from"]


class Component(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def store_url_from(flag: str | None) -> str:
    """--store wins; then MESH_STORE; then CONSUL_HTTP_ADDR implies Consul; else memory."""
    if flag:
        return flag
    if os.environ.get("MESH_STORE"):
        return os.environ["MESH_STORE"]
    if os.environ.get("CONSUL_HTTP_ADDR"):
        addr = os.environ["CONSUL_HTTP_ADDR"]
        return addr if "://" in addr and addr.startswith("consul") else "consul://" + addr.split("://")[-1]
    return "memory://"


async def run_components(components: Sequence[Component], on_ready: Callable[[], Awaitable[None]] | None = None,
                         close: Callable[[], Awaitable[None]] | None = None) -> None:
    """Start in order, wait for SIGINT/SIGTERM, stop in reverse order."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started: list[Component] = []
    try:
        for c in components:
            await c.start()
            started.append(c)
        if on_ready is not None:
            await on_ready()
        await stop.wait()
        logging.getLogger("mesh").info("signal received; shutting down")
    finally:
        for c in reversed(started):
            try:
                await c.stop()
            except Exception:  # keep stopping the rest
                logging.getLogger("mesh").exception("error while stopping %s", type(c).__name__)
        if close is not None:
            await close()
