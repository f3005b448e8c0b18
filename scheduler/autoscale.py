"""The autoscaler's pure core: ``decide(...) -> Outcome``, one model at a time.

Knative KPA semantics, simplified (concurrency metric only). No I/O, no clock:
the shell passes the load history it kept and ``now``, and gets back the
decision plus the small memory to hand to the next call.

Rules, in order:
1. **scale from zero**: a model at zero replicas with any request held at a
   gateway goes to 1 at once ("1 request held -> scale from zero");
2. **scale to zero**: with ``minReplicas 0``, no request, nothing in flight and
   nothing held for ``idle_timeout_s`` -> 0 ("idle 61s -> scale to zero");
3. **panic**: the short-window (``panic_window_s``) desired count is at least
   ``panic_threshold`` x the replicas running -> scale up at once to it and never
   scale down while in panic; panic ends after a full stable window without
   the condition;
4. **stable**: desired = ceil(average concurrency over ``stable_window_s`` /
   target), clamped to [min, max] (at least 1 unless rule 2 applies); scale up
   at once, scale down only after ``scale_down_delay_s`` of consistently lower
   desired counts, and then to the highest of them (no flapping).

Concurrency is requests in flight at the gateways, held requests included,
summed over gateways. Placement (not this module) decides whether the desired
count fits on the nodes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mesh.types import AutoscaleDecision, ModelSpec

__all__ = ["Sample", "Memory", "Outcome", "decide", "window_average"]


@dataclass(frozen=True)
class Sample:
    """The gateways' load on one model at one moment (summed over fresh reports)."""
    at: float               # wall clock, seconds
    concurrency: float      # average requests in flight (held ones included)
    held: int = 0           # requests waiting for a first ready replica
    last_request_at: float = 0.0


@dataclass(frozen=True)
class Memory:
    """What one decision leaves for the next: the shell keeps it per model."""
    desired: int
    active_at: float                # last time the model had traffic (or was scaled up from zero)
    panic_since: float | None = None
    panic_seen_at: float = 0.0      # last time the panic condition held
    down_since: float | None = None  # desired counts below `desired` since then
    down_peak: int = 0              # the highest of those counts


@dataclass(frozen=True)
class Outcome:
    decision: AutoscaleDecision
    memory: Memory
    rule: str                       # initial | held | idle | panic | stable | delay


def window_average(history: Sequence[Sample], now: float, window_s: float) -> tuple[float, int]:
    """Mean concurrency of the samples within ``window_s`` before ``now``, and how many."""
    vals = [s.concurrency for s in history if now - window_s <= s.at <= now]
    return (sum(vals) / len(vals) if vals else 0.0), len(vals)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def decide(spec: ModelSpec, current: int, history: Sequence[Sample], now: float,
           memory: Memory | None) -> Outcome:
    """The desired replica count of ``spec`` now.

    ``current``: replicas placed now (not counting draining ones); ``history``: samples
    oldest first; ``memory``: the previous outcome's memory, or None for a model this
    autoscaler has not seen (a new model starts at max(min, 1), Knative's initial scale).
    """
    a = spec.autoscaling
    lo, hi = spec.min_replicas, spec.max_replicas
    latest = history[-1] if history else None
    held = latest.held if latest is not None and now - latest.at <= max(2 * a.panic_window_s, 5.0) else 0
    last_req = max((s.last_request_at for s in history), default=0.0)
    busy_at = max((s.at for s in history if s.concurrency > 0 or s.held > 0), default=0.0)

    if memory is None:
        start = max(lo, 1) if current == 0 else max(lo, min(hi, current))
        mem = Memory(desired=start, active_at=now)
        if current == 0:
            return _out(spec, now, mem, "initial", f"new model: initial scale {start}")
        memory = mem
    active_at = max(memory.active_at, last_req, busy_at)
    prev = memory.desired

    # 1. a request is waiting and nothing runs: one replica, at once.
    if held > 0 and (prev == 0 or current == 0):
        want = max(1, lo, min(hi, prev))
        mem = Memory(desired=want, active_at=now)
        return _out(spec, now, mem, "held", f"{_plural(held, 'request')} held -> scale from zero")

    # 2. idle long enough, and allowed to reach zero.
    idle = now - active_at
    if lo == 0 and held == 0 and idle >= a.idle_timeout_s:
        mem = Memory(desired=0, active_at=active_at)
        return _out(spec, now, mem, "idle", f"idle {idle:.0f}s -> scale to zero")

    stable_avg, n_stable = window_average(history, now, a.stable_window_s)
    panic_avg, n_panic = window_average(history, now, a.panic_window_s)
    if lo == 0 and prev == 0 and held == 0 and panic_avg == 0:
        # At zero and nothing asks for a replica (e.g. a new leader that restored the decision).
        mem = Memory(desired=0, active_at=active_at)
        return _out(spec, now, mem, "idle", "at zero: no requests held")
    floor = max(lo, 1)
    stable_want = max(floor, min(hi, math.ceil(stable_avg / a.target - 1e-9)))
    panic_want = max(floor, min(hi, math.ceil(panic_avg / a.target - 1e-9)))
    raw_stable = math.ceil(stable_avg / a.target - 1e-9)
    raw_panic = math.ceil(panic_avg / a.target - 1e-9)
    running = max(current, 1)

    # 3. panic: a burst far over what runs now.
    panicking = n_panic > 0 and raw_panic >= a.panic_threshold * running
    panic_since = memory.panic_since
    panic_seen_at = memory.panic_seen_at
    if panicking:
        panic_since = panic_since if panic_since is not None else now
        panic_seen_at = now
    elif panic_since is not None and now - panic_seen_at >= a.stable_window_s:
        panic_since = None
    if panic_since is not None:
        want = max(prev, panic_want, stable_want)
        mem = Memory(desired=want, active_at=active_at, panic_since=panic_since, panic_seen_at=panic_seen_at)
        if panicking:
            reason = (f"panic: {a.panic_window_s:g}s concurrency {panic_avg:.1f} >= {a.panic_threshold:g}x capacity "
                      f"({running}x{a.target:g}) -> {_plural(want, 'replica')}")
        else:
            reason = (f"panic (entered {now - panic_since:.0f}s ago, last burst {now - panic_seen_at:.0f}s ago): "
                      f"holding {_plural(want, 'replica')}, no scale-down in panic")
        return _out(spec, now, mem, "panic", _clamped(reason, raw_panic if panicking else want, lo, hi), panic=True)

    # 4. stable window.
    base = (f"concurrency {stable_avg:.1f} over {a.stable_window_s:g}s / target {a.target:g} "
            f"-> {_plural(stable_want, 'replica')}")
    base = _clamped(base, raw_stable, lo, hi)
    if n_stable == 0:
        base = f"no load reports -> {_plural(stable_want, 'replica')}"
    if stable_want >= prev:
        mem = Memory(desired=stable_want, active_at=active_at)
        return _out(spec, now, mem, "stable", base)
    down_since = memory.down_since if memory.down_since is not None else now
    peak = max(memory.down_peak, stable_want) if memory.down_since is not None else stable_want
    waited = now - down_since
    if waited >= a.scale_down_delay_s:
        mem = Memory(desired=peak, active_at=active_at)
        return _out(spec, now, mem, "stable", f"{base}; lower for {waited:.0f}s -> scale down to {peak}")
    mem = Memory(desired=prev, active_at=active_at, down_since=down_since, down_peak=peak)
    return _out(spec, now, mem, "delay",
                f"{base}; keeping {prev} until lower for {a.scale_down_delay_s:g}s ({waited:.0f}s so far)")


def _clamped(reason: str, raw: int, lo: int, hi: int) -> str:
    if raw > hi:
        return f"{reason} (wanted {raw}, max {hi})"
    if raw < lo:
        return f"{reason} (min {lo})"
    return reason


def _out(spec: ModelSpec, now: float, mem: Memory, rule: str, reason: str, panic: bool = False) -> Outcome:
    return Outcome(AutoscaleDecision(spec.name, mem.desired, reason, now, panic), mem, rule)
