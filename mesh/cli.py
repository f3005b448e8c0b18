"""meshctl: run the embedded mesh (`up`) and operate a running one.

    meshctl up [--store URL]           scheduler + node agent (+ Triton) + gateway in one process
    meshctl apply -f SPEC [--wait]     deploy or update a model
    meshctl get models|nodes [--json]  what runs where
    meshctl describe model NAME        bounds, autoscaling settings and decision, replicas
    meshctl delete MODEL
    meshctl scale MODEL --min N [--max M]
    meshctl rollout status|promote|rollback MODEL [--wait]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import grpc
import yaml
from google.protobuf import json_format

from mesh.errors import SpecError
from mesh.spec import load_spec_file

__all__ = ["main"]

DEFAULT_CONTROL = "127.0.0.1:8010"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="meshctl", description="Operate the Triton model-serving mesh.")
    p.add_argument("--control", default=os.environ.get("MESH_CONTROL_ADDR", DEFAULT_CONTROL),
                   help="scheduler control API host:port, or several comma-separated (any scheduler "
                        "answers; the first reachable is used) (env MESH_CONTROL_ADDR; default %(default)s)")
    sub = p.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="run scheduler, one node agent with its Triton, and a gateway in one process")
    up.add_argument("--store", default=None, help="memory:// (default) or consul://HOST:PORT")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on")
    up.add_argument("--http-port", type=int, default=8000)
    up.add_argument("--grpc-port", type=int, default=8001)
    up.add_argument("--metrics-port", type=int, default=8002)
    up.add_argument("--control-port", type=int, default=None, help="scheduler control API port (default: from --control)")
    up.add_argument("--agent-port", type=int, default=0, help="node agent control API port (default: any free)")
    up.add_argument("--node-id", default=socket.gethostname())
    up.add_argument("--work-dir", default=None, help="Triton model repository and logs (default: a temp dir)")
    up.add_argument("--triton-bin", default=None, help="tritonserver binary (default: the one in nvidia-pytriton)")
    up.add_argument("--log-level", default="INFO")

    ap = sub.add_parser("apply", help="deploy or update a model from an InferenceService spec")
    ap.add_argument("-f", "--file", required=True)
    ap.add_argument("--wait", action="store_true", help="return when minReplicas replicas are ready")
    ap.add_argument("--timeout", type=float, default=300.0)

    get = sub.add_parser("get", help="list models or nodes")
    get.add_argument("what", choices=["models", "nodes", "model"])
    get.add_argument("name", nargs="?")
    get.add_argument("--json", action="store_true")

    desc = sub.add_parser("describe", help="one model in detail: bounds, autoscaling, replicas")
    desc.add_argument("what", choices=["model"])
    desc.add_argument("name")

    de = sub.add_parser("delete", help="remove a model and unload its replicas")
    de.add_argument("model")

    sc = sub.add_parser("scale", help="set a model's replica bounds")
    sc.add_argument("model")
    sc.add_argument("--min", type=int, required=True)
    sc.add_argument("--max", type=int, default=0)

    ro = sub.add_parser("rollout", help="follow or steer a new version's rollout")
    ro.add_argument("action", choices=["status", "promote", "rollback"])
    ro.add_argument("model")
    ro.add_argument("--wait", action="store_true", help="with status: show progress until the rollout settles")
    ro.add_argument("--timeout", type=float, default=600.0)

    args = p.parse_args(argv)
    try:
        if args.cmd == "up":
            return _up(args)
        return asyncio.run(_client(args))
    except SpecError as exc:
        print(f"meshctl: invalid spec: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            print(f"meshctl: cannot reach the scheduler at {args.control}: {exc.details()}\n"
                  f"  is `meshctl up` (or mesh-scheduler) running? set --control or MESH_CONTROL_ADDR", file=sys.stderr)
        else:
            print(f"meshctl: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# -- up ----------------------------------------------------------------------------
def _up(args: argparse.Namespace) -> int:
    from gateway.server import Gateway, GatewayConfig
    from mesh.runtime import run_components, setup_logging, store_url_from
    from mesh.store import open_store
    from node_agent.agent import AgentConfig
    from node_agent.app import NodeAgentApp
    from node_agent.capacity import detect_capacity
    from node_agent.triton import TritonConfig
    from scheduler.app import SchedulerApp

    setup_logging(args.log_level)
    control_port = args.control_port if args.control_port is not None else int(args.control.split(",")[0].rsplit(":", 1)[1])

    async def run() -> None:
        store = open_store(store_url_from(args.store))
        work = Path(args.work_dir or tempfile.mkdtemp(prefix="meshctl-up-"))
        agent_cfg = AgentConfig(
            node_id=args.node_id, work_dir=work, host=args.host, capacity=detect_capacity(),
            triton=TritonConfig(work_dir=work / "triton", host="127.0.0.1", triton_bin=args.triton_bin))
        scheduler = SchedulerApp(store, identity=f"{args.node_id}-scheduler", host=args.host, port=control_port,
                                 lock_ttl_s=10.0)
        agent = NodeAgentApp(agent_cfg, store, control_port=args.agent_port)
        gateway = Gateway(GatewayConfig(host=args.host, grpc_port=args.grpc_port, http_port=args.http_port,
                                        metrics_port=args.metrics_port), store)

        async def ready() -> None:
            print(f"mesh is up (store {store_url_from(args.store)}, work dir {work}):\n"
                  f"  KServe v2 gRPC  {args.host}:{gateway.grpc_port}\n"
                  f"  KServe v2 HTTP  http://{args.host}:{gateway.http_port}\n"
                  f"  metrics         http://{args.host}:{gateway.metrics_port}/metrics\n"
                  f"  control API     {args.host}:{scheduler.port}  (meshctl apply -f SPEC)\n"
                  f"Ctrl-C stops everything.", flush=True)

        await run_components([scheduler, agent, gateway], on_ready=ready, close=store.close)

    asyncio.run(run())
    return 0


# -- client commands -----------------------------------------------------------------
async def _client(args: argparse.Namespace) -> int:
    from meshproto import control_pb2 as cpb
    from meshproto import control_pb2_grpc as cpb_grpc

    async with await _connect(args.control) as ch:
        stub = cpb_grpc.SchedulerStub(ch)
        if args.cmd == "apply":
            spec = load_spec_file(args.file)
            doc = yaml.safe_load(Path(args.file).read_text())
            doc["spec"]["predictor"]["model"]["storageUri"] = spec.storage_uri  # resolved, absolute
            resp = await stub.Apply(cpb.ApplyRequest(spec=json.dumps(doc)), timeout=30)
            print(f"model {resp.model} {'created' if resp.created else 'updated'} (generation {resp.generation})")
            if args.wait:
                return await _wait_ready(stub, resp.model, resp.generation, args.timeout)
            return 0
        if args.cmd == "delete":
            await stub.Delete(cpb.DeleteRequest(model=args.model), timeout=30)
            print(f"model {args.model} deleted")
            return 0
        if args.cmd == "scale":
            r = await stub.Scale(cpb.ScaleRequest(model=args.model, min_replicas=args.min, max_replicas=args.max),
                                 timeout=30)
            print(f"model {args.model} scaled (generation {r.generation})")
            return 0
        if args.cmd == "rollout":
            return await _rollout(stub, args)
        if args.cmd == "describe":
            models = (await stub.GetModels(cpb.GetModelsRequest(name=args.name), timeout=30)).models
            _describe_model(models[0])
            return 0
        if args.what in ("models", "model"):
            models = (await stub.GetModels(cpb.GetModelsRequest(name=args.name or ""), timeout=30)).models
            if args.json:
                print(json.dumps([json_format.MessageToDict(m, preserving_proto_field_name=True) for m in models],
                                 indent=2))
            else:
                _print_models(models)
            return 0
        nodes = (await stub.GetNodes(cpb.GetNodesRequest(), timeout=30)).nodes
        if args.json:
            print(json.dumps([json_format.MessageToDict(n, preserving_proto_field_name=True) for n in nodes], indent=2))
        else:
            _print_nodes(nodes)
        return 0


async def _connect(control: str) -> grpc.aio.Channel:
    """A channel to the first reachable scheduler of a comma-separated list."""
    addresses = [a.strip() for a in control.split(",") if a.strip()]
    for addr in addresses[:-1]:
        ch = grpc.aio.insecure_channel(addr)
        try:
            await asyncio.wait_for(ch.channel_ready(), 2.0)
            return ch
        except asyncio.TimeoutError:
            await ch.close()
    return grpc.aio.insecure_channel(addresses[-1])


async def _rollout(stub, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from meshproto import control_pb2 as cpb

    r = await stub.Rollout(cpb.RolloutRequest(model=args.model, action=args.action), timeout=30)
    if r.message:
        print(r.message)
    deadline = time.monotonic() + args.timeout
    tty = sys.stdout.isatty()
    while True:
        bar_len = 20
        done = r.replicas_new_ready / r.replicas_total if r.replicas_total else 1.0
        bar = "#" * round(done * bar_len) + "-" * (bar_len - round(done * bar_len))
        canary = f", canary {r.canary_traffic_percent}%" if r.phase == "canary" else ""
        line = (f"{r.model}: {r.phase}{canary} [{bar}] {r.replicas_new_ready}/{r.replicas_total} replicas ready "
                f"at {r.new_version} ({r.replicas_old} at other versions; stable {r.stable_version})")
        print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
        settled = r.phase in ("complete", "idle") or (r.phase == "canary" and r.replicas_new_ready > 0)
        if not (args.action == "status" and args.wait) or settled or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
        r = await stub.Rollout(cpb.RolloutRequest(model=args.model, action="status"), timeout=30)
    if tty:
        print()
    if args.action == "status" and not args.wait:
        for rep in r.replicas:
            print(f"  {rep.replica_id:20} {rep.node:16} {rep.version:12} {rep.role:9} {rep.state}")
    if args.wait and time.monotonic() > deadline:
        print(f"meshctl: rollout of {args.model} did not settle in {args.timeout:.0f}s", file=sys.stderr)
        return 1
    return 0


async def _wait_ready(stub, model: str, generation: int, timeout: float) -> int:  # type: ignore[no-untyped-def]
    from meshproto import control_pb2 as cpb

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        views = (await stub.GetModels(cpb.GetModelsRequest(name=model), timeout=30)).models
        v = views[0]
        failed = [r for r in v.replicas if r.state == "failed"]
        if v.ready_replicas >= v.min_replicas and v.generation >= generation and not v.unplaced_reasons:
            print(f"model {model}: {v.ready_replicas}/{v.min_replicas} replicas ready")
            return 0
        if failed:
            print(f"meshctl: model {model} failed to load on {failed[0].node}: {failed[0].error}", file=sys.stderr)
            return 1
        msg = f"waiting: {v.ready_replicas}/{v.min_replicas} ready" + (
            f"; unplaced: {v.unplaced_reasons[0]}" if v.unplaced_reasons else "")
        if msg != last:
            print(msg, file=sys.stderr)
            last = msg
        await asyncio.sleep(0.3)
    print(f"meshctl: timed out after {timeout:.0f}s waiting for {model}: {last}", file=sys.stderr)
    return 1


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _print_models(models) -> None:  # type: ignore[no-untyped-def]
    rows = [["NAME", "READY", "MIN", "MAX", "DESIRED", "REPLICAS", "STATUS", "REASON"]]
    for m in models:
        reps = ",".join(f"{r.node}:{r.state}" for r in m.replicas) or "-"
        status = m.unplaced_reasons[0] if m.unplaced_reasons else ("Ready" if m.ready_replicas >= m.min_replicas else "Progressing")
        desired = (str(m.autoscale_desired) + (" (panic)" if m.panic else "")) if m.autoscale_reason else "-"
        reason = m.autoscale_reason if len(m.autoscale_reason) <= 60 else m.autoscale_reason[:57] + "..."
        rows.append([m.name, f"{m.ready_replicas}/{len(m.replicas)}", str(m.min_replicas), str(m.max_replicas),
                     desired, reps, status, reason or "-"])
    _table(rows)


def _describe_model(m) -> None:  # type: ignore[no-untyped-def]
    a = m.autoscaling
    at = time.strftime("%H:%M:%S", time.localtime(m.autoscale_at)) if m.autoscale_at else "-"
    ago = f" ({time.time() - m.autoscale_at:.0f}s ago)" if m.autoscale_at else ""
    print(f"Name:         {m.name}")
    print(f"Storage:      {m.storage_uri}")
    print(f"Generation:   {m.generation}")
    print(f"Replicas:     min {m.min_replicas}, max {m.max_replicas}; {len(m.replicas)} placed, "
          f"{m.ready_replicas} ready")
    print(f"Autoscaling:  {a.metric} target {a.target:g} per replica; stable window {a.stable_window_s:g}s, "
          f"panic window {a.panic_window_s:g}s at {a.panic_threshold:g}x,")
    print(f"              scale-down delay {a.scale_down_delay_s:g}s, idle timeout {a.idle_timeout_s:g}s"
          + (" (scales to zero)" if m.min_replicas == 0 else ""))
    print(f"Load:         {m.in_flight:.1f} in flight at the gateways, {m.held} held")
    if m.autoscale_reason:
        print(f"Decision:     {m.autoscale_desired} replica(s){' PANIC' if m.panic else ''} at {at}{ago}")
        print(f"  Reason:     {m.autoscale_reason}")
    else:
        print("Decision:     - (the autoscaler has not run for this model yet)")
    print("Replicas:" if m.replicas else "Replicas:     none")
    for r in m.replicas:
        print(f"  {r.replica_id:20} {r.node:16} {r.version:12} {r.role:9} {r.state}"
              + (f"  {r.error}" if r.error else ""))
    for why in m.unplaced_reasons:
        print(f"  unplaced: {why}")


def _print_nodes(nodes) -> None:  # type: ignore[no-untyped-def]
    rows = [["NODE", "ADDRESS", "HEALTH", "SCHED", "CPU(used/total)", "MEMORY(used/total)", "GPUS", "MODELS"]]
    for n in nodes:
        rows.append([n.node_id, n.address, "healthy" if n.healthy else "critical",
                     "cordoned" if n.cordoned else "ok",
                     f"{n.used_cpu_millis}m/{n.cpu_millis}m",
                     f"{n.used_memory_bytes >> 20}Mi/{n.memory_bytes >> 20}Mi",
                     str(n.gpu_count), ",".join(n.models) or "-"])
    _table(rows)


if __name__ == "__main__":
    sys.exit(main())
