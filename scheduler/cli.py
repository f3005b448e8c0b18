"""mesh-scheduler: a leader-elected scheduler with the control API."""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from mesh.runtime import run_components, setup_logging, store_url_from
    from mesh.store import open_store
    from scheduler.app import DEFAULT_CONTROL_PORT, SchedulerApp

    p = argparse.ArgumentParser(prog="mesh-scheduler", description="Places models on nodes; serves the control API.")
    p.add_argument("--store", default=None, help="consul://HOST:PORT (env MESH_STORE)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_CONTROL_PORT)
    p.add_argument("--id", default=f"{socket.gethostname()}-{os.getpid()}")
    p.add_argument("--lock-ttl", type=float, default=10.0, help="leader session TTL, seconds")
    p.add_argument("--lock-delay", type=float, default=1.0, help="leader lock delay, seconds")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    url = store_url_from(args.store)
    if url.startswith("memory"):
        p.error("a standalone scheduler needs a shared store: --store consul://HOST:PORT (or use `meshctl up`)")

    async def run() -> None:
        store = open_store(url)
        app = SchedulerApp(store, args.id, args.host, args.port, args.lock_ttl, args.lock_delay)
        await run_components([app], close=store.close)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
