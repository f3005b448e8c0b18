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
    p.add_argument("--gateway-id", default=None, help="id of this gateway's load report (default: hostname-pid)")
    p.add_argument("--hold-timeout", type=float, default=60.0,
                   help="longest wait, seconds, for a first ready replica (scale from zero)")
    p.add_argument("--max-held", type=int, default=256, help="requests held per model at most")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    if args.hold_timeout <= 0 or args.max_held < 1:
        p.error("--hold-timeout must be > 0 and --max-held >= 1")
    url = store_url_from(args.store)
    if url.startswith("memory"):
        p.error("a standalone gateway needs a shared store: --store consul://HOST:PORT (or use `meshctl up`)")

    async def run() -> None:
        store = open_store(url)
        extra = {"gateway_id": args.gateway_id} if args.gateway_id else {}
        gw = Gateway(GatewayConfig(host=args.host, grpc_port=args.grpc_port, http_port=args.http_port,
                                   metrics_port=args.metrics_port, max_message_bytes=args.max_message_bytes,
                                   hold_timeout_s=args.hold_timeout, max_held=args.max_held, **extra), store)
        await run_components([gw], close=store.close)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
