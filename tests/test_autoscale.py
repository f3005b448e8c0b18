"""The autoscaler's pure core (scheduler/autoscale.py): one table row per rule and edge case."""
from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from mesh.types import AutoscalingSpec, ModelSpec
from scheduler.autoscale import Memory, Sample, decide, window_average

NOW = 1_000.0
AS = AutoscalingSpec(target=4.0, stable_window_s=60.0, panic_window_s=6.0, panic_threshold=2.0,
                     scale_down_delay_s=30.0, idle_timeout_s=60.0)


def _spec(lo: int = 1, hi: int = 10, **kw: float) -> ModelSpec:
    return ModelSpec("m", "/models/m", min_replicas=lo, max_replicas=hi, autoscaling=replace(AS, **kw))


def _flat(conc: float, seconds: float = 60.0, held: int = 0, step: float = 1.0, end: float = NOW,
          last_request_at: float | None = None) -> list[Sample]:
    n = int(seconds / step)
    lr = end if last_request_at is None else last_request_at
    return [Sample(end - seconds + (i + 1) * step, conc, held, lr) for i in range(n)]


def _burst(base: float, peak: float, burst_s: float = 3.0) -> list[Sample]:
    """`base` for a minute, then `peak` for the last `burst_s` seconds."""
    return [Sample(s.at, peak if s.at > NOW - burst_s else base, 0, NOW) for s in _flat(base)]


@dataclass
class Row:
    name: str
    spec: ModelSpec
    current: int
    history: list[Sample]
    memory: Memory | None
    desired: int
    rule: str
    reason: str          # a substring of the reason
    panic: bool = False


def _mem(desired: int, **kw: object) -> Memory:
    return Memory(desired=desired, active_at=kw.pop("active_at", NOW - 1), **kw)  # type: ignore[arg-type]


ROWS = [
    Row("stable: ceil(concurrency / target)", _spec(), 3, _flat(9.2), _mem(3), 3, "stable",
        "concurrency 9.2 over 60s / target 4 -> 3 replicas"),
    Row("stable: exact multiple does not round up", _spec(), 2, _flat(8.0), _mem(2), 2, "stable", "-> 2 replicas"),
    Row("scale up at once (under the panic threshold)", _spec(), 2, _flat(12.0), _mem(2), 3, "stable",
        "-> 3 replicas"),
    Row("clamped to max", _spec(hi=3, panic_threshold=100), 3, _flat(40.0), _mem(3), 3, "stable", "wanted 10, max 3"),
    Row("clamped to min", _spec(lo=2), 2, _flat(0.5), _mem(2), 2, "stable", "(min 2)"),
    Row("min above what fits is still the desired count (placement reports the rest)", _spec(lo=5, hi=5), 2,
        _flat(0.0), _mem(5), 5, "stable", "-> 5 replicas"),
    Row("min 0 with traffic keeps at least one", _spec(lo=0), 1, _flat(0.3), _mem(1), 1, "stable", "-> 1 replica"),
    Row("no reports at all: hold at the floor", _spec(), 1, [], _mem(1), 1, "stable", "no load reports"),
    Row("scale-down waits for the delay", _spec(), 3, _flat(4.0), _mem(3), 3, "delay",
        "keeping 3 until lower for 30s (0s so far)"),
    Row("scale-down still waiting", _spec(), 3, _flat(4.0), _mem(3, down_since=NOW - 10, down_peak=1), 3, "delay",
        "(10s so far)"),
    Row("scale-down after the delay, to the highest lower count seen", _spec(), 3, _flat(4.0),
        _mem(3, down_since=NOW - 31, down_peak=2), 2, "stable", "lower for 31s -> scale down to 2"),
    Row("a higher count resets the delay", _spec(), 3, _flat(12.0), _mem(3, down_since=NOW - 29, down_peak=1), 3,
        "stable", "-> 3 replicas"),
    Row("panic: burst over threshold x capacity", _spec(), 2, _burst(4.0, 40.0, 7.0), _mem(2), 10, "panic",
        "panic: 6s concurrency", panic=True),
    Row("panic: burst below threshold is not panic", _spec(), 2, _burst(4.0, 12.0), _mem(2), 2, "stable",
        "concurrency"),
    Row("panic: never scales down while in panic", _spec(), 6, _flat(1.0),
        _mem(6, panic_since=NOW - 20, panic_seen_at=NOW - 20), 6, "panic", "no scale-down in panic", panic=True),
    Row("panic ends after a stable window without a burst", _spec(), 6, _flat(1.0),
        _mem(6, panic_since=NOW - 90, panic_seen_at=NOW - 61), 6, "delay", "keeping 6"),
    Row("panic with one replica and a small target", _spec(hi=3, target=1.0), 1, _burst(0.0, 6.0, 7.0), _mem(1), 3,
        "panic", "wanted 6, max 3", panic=True),
    Row("idle with min 0 -> zero", _spec(lo=0), 1, _flat(0.0, last_request_at=NOW - 61),
        _mem(1, active_at=NOW - 61), 0, "idle", "idle 61s -> scale to zero"),
    Row("idle but min 1 -> stays at 1", _spec(lo=1), 1, _flat(0.0, last_request_at=NOW - 600),
        _mem(1, active_at=NOW - 600), 1, "stable", "-> 1 replica"),
    Row("not idle long enough", _spec(lo=0), 1, _flat(0.0, last_request_at=NOW - 59),
        _mem(1, active_at=NOW - 70), 1, "stable", "-> 1 replica"),
    Row("a recent request resets the idle clock", _spec(lo=0), 1, _flat(0.0, last_request_at=NOW - 5),
        _mem(1, active_at=NOW - 600), 1, "stable", "-> 1 replica"),
    Row("held requests keep it from going to zero", _spec(lo=0), 1, _flat(0.0, held=1, last_request_at=0.0),
        _mem(1, active_at=NOW - 600), 1, "stable", ""),
    Row("held request at zero -> 1 at once", _spec(lo=0), 0, [Sample(NOW, 1.0, 1, 0.0)], _mem(0, active_at=NOW - 600),
        1, "held", "1 request held -> scale from zero"),
    Row("several held", _spec(lo=0, hi=5), 0, [Sample(NOW, 7.0, 7, 0.0)], _mem(0, active_at=NOW - 600),
        1, "held", "7 requests held"),
    Row("at zero, nothing held -> stays at zero", _spec(lo=0), 0, _flat(0.0, last_request_at=0.0),
        _mem(0, active_at=NOW - 1), 0, "idle", "at zero"),
    Row("at zero long idle", _spec(lo=0), 0, _flat(0.0, last_request_at=0.0),
        _mem(0, active_at=NOW - 600), 0, "idle", "scale to zero"),
    Row("new model starts at max(min, 1)", _spec(lo=0), 0, [], None, 1, "initial", "initial scale 1"),
    Row("new model with min 3", _spec(lo=3), 0, [], None, 3, "initial", "initial scale 3"),
    Row("a new leader adopts the running count", _spec(lo=1, hi=5), 4, _flat(14.0), None, 4, "stable",
        "-> 4 replicas"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_rules(row: Row) -> None:
    out = decide(row.spec, row.current, row.history, NOW, row.memory)
    assert (out.decision.desired, out.rule) == (row.desired, row.rule), out.decision.reason
    assert row.reason in out.decision.reason
    assert out.decision.panic is row.panic
    assert out.memory.desired == out.decision.desired
    assert out.decision.model == "m" and out.decision.at == NOW


def test_window_average_only_counts_the_window() -> None:
    hist = [Sample(NOW - 100, 50.0), Sample(NOW - 5, 2.0), Sample(NOW - 1, 4.0)]
    assert window_average(hist, NOW, 10) == (3.0, 2)
    assert window_average([], NOW, 10) == (0.0, 0)


def _run(spec: ModelSpec, load: list[float], start: int = 1, held: list[int] | None = None) -> list[int]:
    """Drive decide() once a second over a load trace (concurrency per second)."""
    mem: Memory | None = Memory(start, 0.0)
    hist: list[Sample] = []
    out = []
    current = start
    for t, conc in enumerate(load):
        h = held[t] if held else 0
        hist.append(Sample(float(t), conc, h, float(t) if conc > 0 else 0.0))
        res = decide(spec, current, hist, float(t), mem)
        mem = res.memory
        current = res.decision.desired
        out.append(current)
    return out


def test_no_flapping_on_a_noisy_load() -> None:
    spec = _spec(lo=1, hi=10, stable_window_s=10, panic_window_s=2, scale_down_delay_s=5)
    noisy = [8.0, 4.0] * 40   # averages 6 -> 2 replicas; alternating samples must not flap
    trace = _run(spec, noisy, start=2)
    changes = sum(1 for a, b in zip(trace, trace[1:]) if a != b)
    assert changes <= 1, trace


def test_step_up_then_back_down() -> None:
    spec = _spec(lo=1, hi=3, target=1, stable_window_s=6, panic_window_s=2, scale_down_delay_s=5, idle_timeout_s=5)
    load = [0.0] * 2 + [6.0] * 15 + [0.0] * 40
    trace = _run(spec, load)
    up = trace.index(3)
    assert up <= 4, trace                         # panic: within a couple of samples of the step
    assert max(trace) == 3
    assert trace[-1] == 1
    down_at = next(i for i in range(up, len(trace)) if trace[i] < 3)
    assert down_at >= 17 + 5, trace                # not before the scale-down delay after the load stopped
    assert all(trace[i] == 3 for i in range(up, down_at)), trace


def test_idle_goes_to_zero_even_from_several_replicas() -> None:
    spec = _spec(lo=0, hi=3, target=1, stable_window_s=6, panic_window_s=2, scale_down_delay_s=5, idle_timeout_s=5)
    trace = _run(spec, [6.0] * 10 + [0.0] * 10)
    assert trace[9] == 3 and trace[-1] == 0, trace
    assert trace.index(0) == 10 + 4, trace        # the last busy sample at t=9, idle 5s at t=14


def test_scale_from_zero_then_idle_again() -> None:
    spec = _spec(lo=0, hi=2, target=1, stable_window_s=6, panic_window_s=2, scale_down_delay_s=5, idle_timeout_s=5)
    load = [0.0] * 3 + [1.0] * 4 + [0.0] * 20
    held = [0] * 3 + [1] * 2 + [0] * 22
    trace = _run(spec, load, start=0, held=held)
    assert trace[:3] == [0, 0, 0]
    assert trace[3] == 1
    assert trace[-1] == 0
