"""The pure core of the scheduler: ``plan(snapshot) -> Plan``.

No I/O, no clock: everything the decision needs is in the snapshot, so two
schedulers given the same state compute the same plan, and planning the plan's
result again changes nothing.

Rules, in order, per model (models in name order, for determinism):
1. keep replicas on nodes that are healthy, known and still satisfy the spec's
   node selector (cordoned nodes keep what they run; they only refuse new work);
   a replica on a *draining* node stays, marked ``draining``, until a replacement
   elsewhere is ready, and only then goes (no capacity gap, no failed request);
2. drop replicas above the desired count (newest first);
3. place missing replicas: at most one replica of a model per node (Triton
   serves a model name once per server; intra-node parallelism is the model's
   instance_group), on nodes with room for the spec's resources, preferring
   the node left with the least free room after placement (best fit);
4. replicas that fit nowhere are reported with the reason for each node.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.types import ModelLoad, ModelSpec, NodeInfo, Placement, Replica, Resources
from scheduler.rollout import canary_count, rollout_step

__all__ = ["Snapshot", "Plan", "plan", "desired_replicas"]


@dataclass(frozen=True)
class Snapshot:
    specs: Mapping[str, ModelSpec]
    nodes: Mapping[str, NodeInfo]
    healthy: frozenset[str]
    placements: Mapping[str, Placement]
    # Replica counts asked for by the autoscaler or `meshctl scale`, per model.
    desired: Mapping[str, int] = field(default_factory=dict)
    # (node, model) pairs whose replica reports ready at the placed version.
    ready: frozenset[tuple[str, str]] = frozenset()
    now: float = 0.0                                   # wall clock of the snapshot
    # Per model, the gateways' load summed over fresh reports (autoscaler, LRU unload).
    load: Mapping[str, ModelLoad] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    placements: dict[str, Placement]   # models whose placement changes
    deletions: tuple[str, ...]         # models whose placement goes away
    reasons: dict[str, tuple[str, ...]]  # why replicas changed, per model


def desired_replicas(spec: ModelSpec, asked: int | None) -> int:
    want = spec.min_replicas if asked is None else asked
    return max(spec.min_replicas, min(spec.max_replicas, want))


def plan(snap: Snapshot) -> Plan:
    used = _usage(snap)
    changed: dict[str, Placement] = {}
    reasons: dict[str, tuple[str, ...]] = {}
    for name in sorted(snap.specs):
        spec = snap.specs[name]
        old = snap.placements.get(name)
        new, why = _place_model(spec, old, snap, used)
        if old is None or new != old:
            changed[name] = new
            reasons[name] = tuple(why)
    deletions = tuple(sorted(m for m in snap.placements if m not in snap.specs))
    return Plan(changed, deletions, reasons)


def _usage(snap: Snapshot) -> dict[str, Resources]:
    used: dict[str, Resources] = {n: Resources() for n in snap.nodes}
    for name, pl in snap.placements.items():
        spec = snap.specs.get(name)
        if spec is None:
            continue
        for r in pl.replicas:
            if r.node in used:
                used[r.node] = used[r.node] + spec.resources
    return used


def _selector_ok(spec: ModelSpec, node: NodeInfo) -> bool:
    return all(node.labels.get(k) == v for k, v in spec.node_selector.items())


def _place_model(
    spec: ModelSpec, old: Placement | None, snap: Snapshot, used: dict[str, Resources]
) -> tuple[Placement, list[str]]:
    why: list[str] = []
    kept: list[Replica] = []
    for r in (old.replicas if old else ()):
        node = snap.nodes.get(r.node)
        if node is None or r.node not in snap.healthy:
            why.append(f"replica {r.replica_id} lost: node {r.node} is {'gone' if node is None else 'unhealthy'}")
            _release(used, r.node, spec)
        elif not _selector_ok(spec, node):
            why.append(f"replica {r.replica_id} moved: node {r.node} no longer matches nodeSelector")
            _release(used, r.node, spec)
        elif node.draining:
            kept.append(Replica(r.replica_id, r.node, r.version, "draining"))
            if r.role != "draining":
                why.append(f"replica {r.replica_id} draining: node {r.node} is being drained")
        else:
            kept.append(r)  # other versions are moved on by the rollout step below

    want = desired_replicas(spec, snap.desired.get(spec.name))
    draining = [r for r in kept if r.role == "draining"]
    kept = [r for r in kept if r.role != "draining"]
    # Rollouts (scheduler/rollout.py): canary replicas stand beside the stable set;
    # a rolling update moves one replica at a time to the new version.
    step = rollout_step(spec, kept, draining, snap.ready,
                        lambda taken: _choose_node(spec, snap, used, taken)[0] is not None)
    kept, canaries, place_version = step.stable, step.canaries, step.place_version
    draining = draining + step.to_drain
    why.extend(step.why)
    for gone in step.dropped:
        _release(used, gone.node, spec)
    # Scale down: other versions go first, then the newest.
    kept.sort(key=lambda r: r.version == spec.version)
    while len(kept) > want:
        gone = kept.pop(0) if kept[0].version != spec.version else kept.pop()
        _release(used, gone.node, spec)
        why.append(f"replica {gone.replica_id} removed: scaled to {want}")

    next_id = 1 + max((_ordinal(r.replica_id) for r in (old.replicas if old else ())), default=-1)
    unplaced: list[str] = []
    while len(kept) < want:
        taken = {r.node for r in kept} | {r.node for r in draining} | {r.node for r in canaries}
        node_id, rejected = _choose_node(spec, snap, used, taken)
        if node_id is None:
            unplaced.append("; ".join(rejected) or "no nodes are registered")
            break
        used[node_id] = used[node_id] + spec.resources
        rid = f"{spec.name}-{next_id}"
        next_id += 1
        kept.append(Replica(rid, node_id, place_version))
        why.append(f"replica {rid} placed on {node_id}")
    canary_want = canary_count(spec, want) if step.canary_mode else 0
    while len(canaries) < canary_want:
        taken = {r.node for r in kept} | {r.node for r in draining} | {r.node for r in canaries}
        node_id, _rejected = _choose_node(spec, snap, used, taken)
        if node_id is None:
            if len(kept) > 1:  # no spare node: turn one stable replica into the canary, in place
                r = kept.pop()
                canaries.append(Replica(r.replica_id, r.node, spec.version, "canary"))
                why.append(f"replica {r.replica_id} on {r.node} becomes the canary (version {spec.version})")
                continue
            break
        used[node_id] = used[node_id] + spec.resources
        rid = f"{spec.name}-{next_id}"
        next_id += 1
        canaries.append(Replica(rid, node_id, spec.version, "canary"))
        why.append(f"canary {rid} (version {spec.version}) placed on {node_id}")
    while len(canaries) > canary_want:
        gone = canaries.pop()
        _release(used, gone.node, spec)
        why.append(f"canary {gone.replica_id} removed")
    kept = kept + canaries
    # Drained replicas go once enough replacements are ready; until then they serve.
    ready_new = sum(1 for r in kept if (r.node, spec.name) in snap.ready)
    surplus = ready_new - (want - len(draining))
    for r in list(draining):
        if surplus > 0 or want == 0:
            draining.remove(r)
            _release(used, r.node, spec)
            why.append(f"replica {r.replica_id} removed from draining node {r.node}: replacement ready")
            surplus -= 1
    kept = kept + draining
    missing = want - len(kept) + len(draining)
    if missing > 1:
        unplaced = unplaced * missing
    if old is not None and len(old.unplaced) == len(unplaced):
        # Same shortfall as before: keep its wording, so a reason that changes only
        # because other models moved does not rewrite the placement (no churn).
        unplaced = list(old.unplaced)
    generation = spec.generation
    return Placement(spec.name, generation, tuple(kept), tuple(unplaced)), why


def _choose_node(
    spec: ModelSpec, snap: Snapshot, used: dict[str, Resources], taken: set[str]
) -> tuple[str | None, list[str]]:
    best: tuple[tuple[int, int, int, str], str] | None = None
    rejected: list[str] = []
    for node_id in sorted(snap.nodes):
        node = snap.nodes[node_id]
        if node_id not in snap.healthy:
            rejected.append(f"{node_id}: unhealthy")
            continue
        if node.cordoned or node.draining:
            rejected.append(f"{node_id}: {'draining' if node.draining else 'cordoned'}")
            continue
        if node_id in taken:
            rejected.append(f"{node_id}: already runs a replica of {spec.name}")
            continue
        if not _selector_ok(spec, node):
            rejected.append(f"{node_id}: labels do not match nodeSelector {spec.node_selector}")
            continue
        free = node.capacity - used[node_id]
        short = spec.resources.shortfall(free)
        if short:
            rejected.append(f"{node_id}: {', '.join(short)}")
            continue
        left = free - spec.resources
        score = (left.gpu_memory_bytes, left.cpu_millis, left.memory_bytes, node_id)
        if best is None or score < best[0]:
            best = (score, node_id)
    return (best[1] if best else None), rejected


def _release(used: dict[str, Resources], node_id: str, spec: ModelSpec) -> None:
    if node_id in used:
        used[node_id] = used[node_id] - spec.resources


def _ordinal(replica_id: str) -> int:
    tail = replica_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1
