"""mesh-gateway: the KServe v2 gateway as its own process."""
from __future__ import annotations

import argparse
import asyncio
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from gateway.server import Gateway, GatewayConfig
    from mesh.runtime import run_components, setup_logging, store_url_from
    from mesh.store import open_store

    p = argparse.ArgumentParser(prog="mesh-gateway", description="KServe v2 gRPC + HTTP gateway of the mesh.")
    p.add_argument("--store", default=None, help="consul://HOST:PORT (env MESH_STORE)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    url = store_url_from(args.store)
    if url.startswith("memory"):
        p.error("a standalone gateway needs a shared store: --store consul://HOST:PORT (or use `meshctl up`)")

    async def run() -> None:
        store = open_store(url)
        gw = Gateway(GatewayConfig(host=args.host, grpc_port=args.grpc_port, http_port=args.http_port,
                                   metrics_port=args.metrics_port, max_message_bytes=args.max_message_bytes), store)
        await run_components([gw], close=store.close)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
