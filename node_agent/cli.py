"""node-agent: run a host's agent (with its Triton), or operate one.

    node-agent run --store URL --node-id ID      supervise Triton, serve placements
    node-agent status [--agent HOST:PORT]        Triton health and replicas
    node-agent cordon|uncordon [--agent ...]     stop / resume new placements here
    node-agent drain [--agent ...]               move this host's replicas elsewhere, no failed requests
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
from pathlib import Path

import grpc

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="node-agent", description="The mesh's per-host agent.")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the agent and its tritonserver")
    run.add_argument("--store", default=None, help="consul://HOST:PORT (env MESH_STORE)")
    run.add_argument("--node-id", default=socket.gethostname())
    run.add_argument("--host", default="127.0.0.1", help="address Triton and the agent listen on")
    run.add_argument("--advertise", default="", help="address gateways reach this host at (default: --host; "
                     "required with --host 0.0.0.0)")
    run.add_argument("--port", type=int, default=8011, help="agent control API port")
    run.add_argument("--work-dir", default=None)
    run.add_argument("--triton-bin", default=None, help="tritonserver binary (default: the one in nvidia-pytriton)")
    run.add_argument("--backend-dir", default=None, help="Triton backends directory (with --triton-bin)")
    run.add_argument("--triton-grpc-port", type=int, default=0)
    run.add_argument("--triton-http-port", type=int, default=0)
    run.add_argument("--cpu", default=None, help="CPU to offer (default: all cores), e.g. 4 or 3500m")
    run.add_argument("--memory", default=None, help="memory to offer (default: all), e.g. 8Gi")
    run.add_argument("--label", action="append", default=[], help="KEY=VALUE node label (repeatable)")
    run.add_argument("--ttl", type=float, default=10.0, help="health check TTL, seconds")
    run.add_argument("--log-level", default="INFO")
    for name in ("status", "cordon", "uncordon", "drain"):
        c = sub.add_parser(name)
        c.add_argument("--agent", default=os.environ.get("MESH_AGENT_ADDR", "127.0.0.1:8011"))
    args = p.parse_args(argv)
    if args.cmd == "run":
        return _run(args, p)
    return asyncio.run(_operate(args))


def _run(args: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    from mesh.runtime import run_components, setup_logging, store_url_from
    from mesh.spec import parse_cpu, parse_memory
    from mesh.store import open_store
    from node_agent.agent import AgentConfig
    from node_agent.app import NodeAgentApp
    from node_agent.capacity import detect_capacity
    from node_agent.triton import TritonConfig

    setup_logging(args.log_level)
    url = store_url_from(args.store)
    if url.startswith("memory"):
        p.error("a standalone node agent needs a shared store: --store consul://HOST:PORT (or use `meshctl up`)")
    labels = {}
    for item in args.label:
        k, sep, v = item.partition("=")
        if not sep:
            p.error(f"--label expects KEY=VALUE, got {item!r}")
        labels[k] = v
    cap = detect_capacity(parse_cpu(args.cpu, "--cpu") if args.cpu else None,
                          parse_memory(args.memory, "--memory") if args.memory else None)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix=f"node-agent-{args.node_id}-"))
    if args.host == "0.0.0.0" and not args.advertise:
        p.error("with --host 0.0.0.0, give --advertise ADDRESS (how gateways and the store's checks reach this host)")
    cfg = AgentConfig(node_id=args.node_id, work_dir=work, host=args.host, advertise=args.advertise,
                      capacity=cap, labels=labels,
                      ttl_s=args.ttl, triton=TritonConfig(work_dir=work / "triton", host=args.host,
                                                          triton_bin=args.triton_bin,
                                                          backend_dir=args.backend_dir,
                                                          grpc_port=args.triton_grpc_port,
                                                          http_port=args.triton_http_port))

    async def go() -> None:
        store = open_store(url)
        await run_components([NodeAgentApp(cfg, store, control_port=args.port)], close=store.close)

    asyncio.run(go())
    return 0


async def _operate(args: argparse.Namespace) -> int:
    from meshproto import control_pb2 as cpb
    from meshproto import control_pb2_grpc as cpb_grpc

    try:
        async with grpc.aio.insecure_channel(args.agent) as ch:
            stub = cpb_grpc.NodeAgentStub(ch)
            if args.cmd == "status":
                s = await stub.Status(cpb.NodeStatusRequest(), timeout=10)
                print(f"node {s.node_id}: triton {'ready' if s.triton_ready else 'NOT READY'}, "
                      f"{s.triton_restarts} restart(s), {'cordoned' if s.cordoned else 'schedulable'}")
                for r in s.replicas:
                    print(f"  {r.replica_id:24} {r.state:10} version {r.version} {r.error}")
                return 0
            r = await stub.Drain(cpb.DrainRequest(cordon_only=args.cmd == "cordon", undo=args.cmd == "uncordon"),
                                 timeout=10)
            print(r.message)
            return 0
    except grpc.aio.AioRpcError as exc:
        print(f"node-agent: cannot reach the agent at {args.agent}: {exc.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
