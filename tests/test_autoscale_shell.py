"""The autoscaler's shells without Triton: the gateway's load reporter, the scheduler's
reading of load reports and decision writes (in-memory store), and the gateway's hold
queue (in a subprocess: the gateway core imports meshproto's inference messages, which
must not meet tritonclient.grpc's in one process)."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

from mesh.store import MemoryStore
from mesh.types import (
    KEYS,
    AutoscaleDecision,
    AutoscalingSpec,
    LoadReport,
    ModelLoad,
    ModelSpec,
    Placement,
    from_json,
    to_json,
)
from support.mesh import ROOT


class _Clock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_load_reporter_averages_peaks_and_goes_quiet_when_idle() -> None:
    from gateway.loadreport import LoadReporter

    async def main() -> None:
        store = MemoryStore()
        clock = _Clock()
        known = {"m"}
        rep = LoadReporter(store, "gw-1", lambda: known, clock=clock)
        c = rep.counter("m")
        for in_flight, held in ((2, 0), (4, 1), (0, 0), (2, 0)):
            c.in_flight, c.held = in_flight, held
            c.requests += in_flight
            clock.t += 0.25
            rep.sample()
        written = await rep.report_once(1.0)
        assert written is not None and written.gateway == "gw-1"
        ml = written.models["m"]
        assert (ml.in_flight, ml.peak_in_flight, ml.held, ml.requests) == (2.0, 4, 1, 8)
        assert ml.last_request_at == clock.t
        stored = from_json(LoadReport, (await store.get(KEYS.load("gw-1"))).value)
        assert stored.models["m"] == ml
        # Idle: one all-zero report, then silence (no store writes, no watcher wake-ups).
        c.in_flight = 0
        rep.sample()
        assert await rep.report_once(1.0) is not None
        rep.sample()
        assert await rep.report_once(1.0) is None
        # A model that is gone and quiet is forgotten; stop() removes the report.
        known.clear()
        rep.build_report(1.0)
        assert rep.counters == {}
        await rep.stop()
        assert await store.get(KEYS.load("gw-1")) is None
        await store.close()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_read_load_sums_fresh_reports_and_ignores_stale_ones() -> None:
    from scheduler.reconciler import read_load

    async def main() -> None:
        store = MemoryStore()
        now = 5_000.0
        reports = {
            "a": LoadReport("a", now - 0.5, 1.0, {"m": ModelLoad(2.0, 3, 1, 10, now - 0.6)}),
            "b": LoadReport("b", now - 1.0, 1.0, {"m": ModelLoad(1.5, 2, 0, 5, now - 2.0), "n": ModelLoad(1.0)}),
            "old": LoadReport("old", now - 10.0, 1.0, {"m": ModelLoad(100.0, 100, 0, 100, now - 10)}),
        }
        for gw, rep in reports.items():
            await store.put(KEYS.load(gw), to_json(rep))
        await store.put(KEYS.load("junk"), b"{not json")
        load = await read_load(store, now)
        assert load["m"] == ModelLoad(3.5, 5, 1, 15, now - 0.6)
        assert load["n"].in_flight == 1.0
        await store.close()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_reconciler_writes_decisions_and_the_desired_count_reaches_placement() -> None:
    from scheduler.reconciler import Reconciler

    class _Leader:
        is_leader = True
        changed = asyncio.Event

    async def main() -> None:
        store = MemoryStore()
        fast = AutoscalingSpec(target=1, stable_window_s=6, panic_window_s=2, scale_down_delay_s=5, idle_timeout_s=5)
        spec = ModelSpec("m", "/models/m", min_replicas=1, max_replicas=3, autoscaling=fast)
        await store.put(KEYS.model("m"), to_json(spec))
        rec = Reconciler(store, _Leader())  # type: ignore[arg-type]
        await rec.reconcile_once()
        first = from_json(AutoscaleDecision, (await store.get(KEYS.autoscale("m"))).value)
        assert first.desired == 1 and "initial scale" in first.reason
        now = time.time()
        await store.put(KEYS.load("gw"), to_json(LoadReport("gw", now, 1.0, {"m": ModelLoad(8.0, 8, 0, 100, now)})))
        await rec.reconcile_once()
        d = from_json(AutoscaleDecision, (await store.get(KEYS.autoscale("m"))).value)
        assert d.desired == 3 and d.panic and "panic" in d.reason, d
        pl = from_json(Placement, (await store.get(KEYS.placement("m"))).value)
        assert len(pl.replicas) + len(pl.unplaced) == 3   # no nodes here: three unplaced replicas
        # A deleted model's decision goes too.
        await store.delete(KEYS.model("m"))
        await rec.reconcile_once()
        assert await store.get(KEYS.autoscale("m")) is None
        await store.close()

    asyncio.run(asyncio.wait_for(main(), 10))


_HOLD_SCRIPT = textwrap.dedent('''
    import asyncio, sys, time
    from gateway.core import InferenceCore
    from gateway.loadreport import LoadReporter
    from gateway.metrics import GatewayMetrics
    from gateway.routing import RoutingTable
    from gateway.upstream import UpstreamPool
    from mesh.errors import MeshError
    from mesh.store import MemoryStore
    from mesh.types import KEYS, ModelSpec, Placement, to_json
    from meshproto import inference_pb2 as pb

    async def main():
        store = MemoryStore()
        await store.put(KEYS.model("z"), to_json(ModelSpec("z", "/models/z", min_replicas=0, max_replicas=1)))
        await store.put(KEYS.placement("z"), to_json(Placement("z", 1)))
        routing = RoutingTable(store)
        await routing.refresh()
        load = LoadReporter(store, "gw", lambda: routing.specs)
        core = InferenceCore(routing, UpstreamPool(1 << 20), GatewayMetrics(), load, max_held=2, hold_timeout_s=0.6)
        body = pb.ModelInferRequest(model_name="z").SerializeToString()

        async def call(model, timeout=None):
            t0 = time.monotonic()
            try:
                await core.infer_raw(pb.ModelInferRequest(model_name=model).SerializeToString(), timeout)
                return "ok", "", time.monotonic() - t0
            except MeshError as exc:
                return exc.grpc_code.name, str(exc), time.monotonic() - t0

        print("unknown", *call_fmt(await call("nope")))
        results = await asyncio.gather(call("z"), call("z"), call("z"))
        for r in results:
            print("held", *call_fmt(r))
        print("deadline", *call_fmt(await call("z", timeout=0.2)))
        print("counters", load.counters["z"].in_flight, load.counters["z"].held, load.counters["z"].requests)
        await store.close()

    def call_fmt(r):
        return r[0], f"{r[2]:.2f}", r[1]

    asyncio.run(asyncio.wait_for(main(), 20))
''')


def test_hold_queue_bounds_and_reasons() -> None:
    r = subprocess.run([sys.executable, "-c", _HOLD_SCRIPT], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    unknown = out[0].split(" ", 3)
    assert unknown[1] == "NOT_FOUND" and float(unknown[2]) < 0.1, out[0]
    held = [ln.split(" ", 3) for ln in out[1:4]]
    codes = sorted(h[1] for h in held)
    assert codes == ["RESOURCE_EXHAUSTED", "UNAVAILABLE", "UNAVAILABLE"], out
    for h in held:
        if h[1] == "UNAVAILABLE":
            assert 0.5 <= float(h[2]) < 2.0, h
            assert "model 'z' is scaling from zero: no replica ready after 0.6s (no replicas placed)" in h[3], h
        else:
            assert float(h[2]) < 0.1 and "hold queue is full" in h[3], h
    deadline = out[4].split(" ", 3)
    assert deadline[1] == "UNAVAILABLE" and float(deadline[2]) < 0.5, out[4]   # the request's own deadline wins
    assert out[5] == "counters 0 0 4", out[5]   # deployed models only: the unknown one is not counted
