"""Rollout steps, a pure part of the placement core.

A spec whose artifact version changed starts a rollout. Two kinds:

* **canary** (``canaryTrafficPercent: N``): the replicas at the old version stay
  the stable set (role ``serving``) and keep their version; ``canary_count`` new
  replicas at the new version (role ``canary``) are added on spare nodes, or, with
  no spare node, one stable replica is turned into the canary in place. Gateways
  send N% of requests to canaries. ``meshctl rollout promote`` clears the percent
  (a rolling update then moves the stable set, and canaries become ``serving``);
  ``rollback`` re-applies the stable spec (canaries at the other version go).
* **rolling** (no percent): one replica at a time, and only while every replica
  is ready. With a spare node, the old replica is marked ``draining`` (it keeps
  serving) so a replacement at the new version is placed beside it and the old
  one goes once the replacement is ready; with no spare node, the replica is
  reloaded in place (Triton keeps serving the old version until the new one has
  loaded, and the node agent reports it ready meanwhile).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.types import ModelSpec, Replica

__all__ = ["RolloutStep", "rollout_step", "canary_count"]


@dataclass
class RolloutStep:
    stable: list[Replica]
    canaries: list[Replica]
    place_version: str                       # version for newly placed stable replicas
    canary_mode: bool
    to_drain: list[Replica] = field(default_factory=list)
    dropped: list[Replica] = field(default_factory=list)
    why: list[str] = field(default_factory=list)


def canary_count(spec: ModelSpec, want: int) -> int:
    pct = spec.canary_traffic_percent or 0
    return 0 if pct <= 0 else max(1, round(want * pct / 100))


def rollout_step(
    spec: ModelSpec, replicas: list[Replica], draining: list[Replica], ready: frozenset[tuple[str, str]],
    spare_node: Callable[[set[str]], bool],
) -> RolloutStep:
    new = spec.version
    others = [r for r in replicas if r.version != new]
    canary_mode = spec.canary_traffic_percent is not None and any(r.role != "canary" for r in others)
    if canary_mode:
        stable = [Replica(r.replica_id, r.node, r.version, "serving") for r in others if r.role != "canary"]
        canaries = [Replica(r.replica_id, r.node, r.version, "canary") for r in replicas if r.version == new]
        dropped = [r for r in others if r.role == "canary"]  # an older canary, superseded
        return RolloutStep(stable, canaries, stable[0].version, True, dropped=dropped,
                           why=[f"canary {r.replica_id} (version {r.version}) replaced by a newer canary"
                                for r in dropped])

    step = RolloutStep([], [], new, False)
    for r in replicas:
        if r.role == "canary" and r.version != new:
            step.dropped.append(r)
            step.why.append(f"canary {r.replica_id} (version {r.version}) removed: rolled back to {new}")
        elif r.role == "canary":
            step.stable.append(Replica(r.replica_id, r.node, r.version, "serving"))
            step.why.append(f"canary {r.replica_id} promoted to serving")
        else:
            step.stable.append(r)
    old = [r for r in step.stable if r.version != new]
    all_ready = all((r.node, spec.name) in ready for r in step.stable + draining)
    if not old or draining or not all_ready:
        return step  # nothing to roll, or wait: one replica at a time, each ready before the next
    victim = old[0]
    taken = {r.node for r in step.stable} | {r.node for r in draining}
    if spare_node(taken):
        step.stable.remove(victim)
        step.to_drain.append(Replica(victim.replica_id, victim.node, victim.version, "draining"))
        step.why.append(f"rolling update: replica {victim.replica_id} on {victim.node} drains while a "
                        f"version {new} replacement starts")
    else:
        i = step.stable.index(victim)
        step.stable[i] = Replica(victim.replica_id, victim.node, new, victim.role)
        step.why.append(f"rolling update: replica {victim.replica_id} on {victim.node} reloads in place "
                        f"to version {new}")
    return step
