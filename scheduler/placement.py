"""The pure core of the scheduler: ``plan(snapshot) -> Plan``.

No I/O, no clock: everything the decision needs is in the snapshot (``snap.now``
is the time), so two schedulers given the same state compute the same plan, and
planning the plan's result again changes nothing.

Order: models are planned one at a time by ``priority`` (highest first), then
by name, except that models that may be unloaded while idle (``unload_when_idle``
and idle, see rule 5) come after all others. Per model:

1. keep replicas on nodes that are healthy, known and still satisfy the spec's
   node selector (cordoned nodes keep what they run; they only refuse new work);
   a replica on a *draining* node stays, marked ``draining``, until a replacement
   elsewhere is ready, and only then goes (no capacity gap, no failed request);
   replicas evicted or unloaded for another model earlier in this plan go;
2. rollouts (``scheduler/rollout.py``), then drop replicas above the desired
   count (other versions first, then the newest);
3. place missing replicas: at most one replica of a model per node (Triton
   serves a model name once per server; intra-node parallelism is the model's
   instance_group), only on healthy, uncordoned, undrained nodes whose labels
   match ``nodeSelector`` and with free room on all four dimensions (CPU,
   memory, GPU count, GPU memory; never over-committed). A spec that asks for
   a GPU (count or memory) only goes to nodes with GPUs.
   * **Spread**: the zone (label ``zone``, else ``topology.kubernetes.io/zone``;
     unlabelled nodes form one zone) holding the fewest replicas of this model
     wins; among equally loaded zones, the best fit.
   * **Bin-packing (best fit)**: the node left with the least free room on the
     spec's scarcest dimension wins: GPU memory (then GPU count, CPU, memory)
     for a spec asking for GPU memory; GPU count first for one asking only for
     GPUs; for a CPU-only spec, CPU or memory, whichever it asks the larger
     share of the schedulable cluster's total for, and then it prefers nodes
     without GPUs (GPU nodes keep their CPU and memory for GPU models). Ties go
     to the node id, so the plan is deterministic.
4. **Priority**: a non-idle model that still cannot place a replica may evict
   replicas (role ``serving``) of models with a strictly lower ``priority``,
   never taking such a model below its ``minReplicas`` (counting its replicas on
   healthy, matching, undrained nodes). On each candidate node victims are
   taken lowest priority first until the replica fits, then any victim not
   needed is given back; the node chosen is the one whose highest evicted
   priority is lowest, then with the fewest evictions, then the spread and
   best-fit order above. Both models' reasons say so: the evicting model
   ``replica X-3 placed on n1 after evicting V-2 (priority 0)``, the victim
   ``replica V-2 on n1 evicted for X (priority 10)``; an evicted replica that
   finds no other room is reported unplaced as ``evicted for X (priority 10)``.
5. **LRU unload (opt-in)**: in that same search, replicas of *other* models
   with ``unload_when_idle`` that are idle may be unloaded, even below their
   ``minReplicas``, and before any eviction (nobody is using them): a node
   needing only unloads beats one needing an eviction, and among those the one
   whose most recently used unloaded model was used longest ago (least
   recently used first; on one node, least recently used first too). Idle
   means: no in-flight, peak or held requests in ``snap.load`` and
   ``last_request_at`` at least ``LRU_IDLE_S`` (60 s) before ``snap.now`` (no
   load report: never used, i.e. ``last_request_at`` 0). The unloaded replica
   is reported unplaced as ``unloaded while idle (LRU) for X`` and comes back
   as soon as there is free room for it again, or evicts/unloads others once
   it is busy again (the gateway holds its requests, so it is not idle). An
   idle model never evicts or unloads anything (no ping-pong between two idle
   models).
6. replicas that fit nowhere are reported, one reason per missing replica: for
   up to ``DETAIL_NODES`` nodes the reason of each node, beyond that counts
   per reason. The wording of an unchanged shortfall is kept (no churn).

``plan`` repeats this step on its own result (with readiness kept only for
replicas that the step left as they were) until nothing changes, at most
``MAX_PASSES`` times, so space freed late in a step (a lost node, a scale-down,
an eviction) is used in the same plan and the plan is a fixed point.

Speed: nodes are indexed per (node selector, dimension order) in lists sorted
by free room, one per zone and tier, so a placement is a bisect plus a short
scan instead of a scan of every node; a stable state replans in
O(replicas). Nothing existing moves for an unrelated change (a model or node
added or removed): replicas are never rebalanced.
"""
from __future__ import annotations

import dataclasses
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice

from mesh.types import ModelLoad, ModelSpec, NodeInfo, Placement, Replica, Resources
from scheduler.rollout import canary_count, rollout_step

__all__ = ["Snapshot", "Plan", "plan", "desired_replicas", "LRU_IDLE_S", "ZONE_LABELS", "DETAIL_NODES", "MAX_PASSES"]

LRU_IDLE_S = 60.0       # a model unused this long (and nothing in flight) is idle, for LRU unload
ZONE_LABELS = ("zone", "topology.kubernetes.io/zone")
DETAIL_NODES = 10       # unplaced reasons name each node up to this many nodes, then count per reason
MAX_PASSES = 4          # plan steps repeated on their own result until nothing changes


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
    changed, reasons = _plan_once(snap)
    step, cur = changed, snap
    for _ in range(MAX_PASSES - 1):
        if not step:
            break
        cur = _applied(cur, step)
        step, why = _plan_once(cur)
        for name, pl in step.items():
            changed[name] = pl
            reasons[name] = reasons.get(name, ()) + why[name]
    out = {m: pl for m, pl in changed.items() if snap.placements.get(m) != pl}
    deletions = tuple(sorted(m for m in snap.placements if m not in snap.specs))
    return Plan(out, deletions, {m: reasons[m] for m in out})


def _plan_once(snap: Snapshot) -> tuple[dict[str, Placement], dict[str, tuple[str, ...]]]:
    used = _Usage(snap)
    changed: dict[str, Placement] = {}
    reasons: dict[str, tuple[str, ...]] = {}
    specs = snap.specs
    for name in sorted(specs, key=lambda m: (used.idle[m], -specs[m].priority, m)):
        spec = specs[name]
        old = snap.placements.get(name)
        new, why = _place_model(spec, old, snap, used)
        notes = used.notes.pop(name, None)  # evicted or unloaded for a model planned earlier
        if old is None or new != old:
            changed[name] = new
            reasons[name] = tuple((notes or []) + why)
    return changed, reasons


def _applied(snap: Snapshot, step: Mapping[str, Placement]) -> Snapshot:
    """The snapshot after ``step``: replicas it moved, added or reloaded are not ready yet."""
    ready = set()
    versions: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    for node_id, model in snap.ready:
        if model not in step:
            ready.add((node_id, model))
            continue
        if model not in versions:
            before = snap.placements.get(model)
            versions[model] = ({r.node: r.version for r in before.replicas} if before else {},
                               {r.node: r.version for r in step[model].replicas})
        before_v, after_v = versions[model]
        if node_id in after_v and after_v[node_id] == before_v.get(node_id):
            ready.add((node_id, model))
    return dataclasses.replace(snap, placements={**snap.placements, **step}, ready=frozenset(ready))


_CPU, _MEM, _GPUS, _GMEM = range(4)
_DIM_NAMES = ("cpu", "memory", "gpus", "gpu memory")
_Vec = tuple[int, int, int, int]
_Key = tuple[int, int, int, int, str]   # free room in a pool's dimension order, then the node id
_Victim = tuple[int, float, str, Replica, _Vec]   # class (0 unload, 1 evict), priority or last use, model, replica, size


def _vec(r: Resources) -> _Vec:
    return (r.cpu_millis, r.memory_bytes, r.gpu_count, r.gpu_memory_bytes)


def _fits(req: _Vec, free: list[int]) -> bool:
    return req[0] <= free[0] and req[1] <= free[1] and req[2] <= free[2] and req[3] <= free[3]


def _wants_gpu(r: Resources) -> bool:
    return r.gpu_count > 0 or r.gpu_memory_bytes > 0


def _zone(node: NodeInfo) -> str:
    for label in ZONE_LABELS:
        z = node.labels.get(label)
        if z:
            return z
    return ""


def _last_used(name: str, snap: Snapshot) -> float:
    load = snap.load.get(name)
    return load.last_request_at if load is not None else 0.0


def _idle(spec: ModelSpec, snap: Snapshot) -> bool:
    """May be unloaded (LRU) for another model: opted in, nothing in flight, unused for LRU_IDLE_S."""
    if not spec.unload_when_idle:
        return False
    load = snap.load.get(spec.name)
    if load is not None and (load.in_flight > 0 or load.peak_in_flight > 0 or load.held > 0):
        return False
    return snap.now - _last_used(spec.name, snap) >= LRU_IDLE_S


class _Pool:
    """Schedulable nodes matching one node selector, sorted by free room in one dimension order.

    ``lists[zone][tier]`` holds keys ``(free in dims order..., node_id)``; tier 0 is
    preferred (for a CPU-only spec: nodes without GPUs; for a GPU spec: all GPU nodes).
    A node with no free room at all in a dimension the pool's specs ask for (``mask``;
    typically a GPU node whose GPUs are all taken) is left out of the lists until it
    has some again, so searches do not walk over nodes that cannot fit anything.
    """
    __slots__ = ("dims", "mask", "gpu", "lists", "zones", "nodes")

    def __init__(self, dims: _Vec, mask: tuple[int, ...], gpu: bool) -> None:
        self.dims = dims
        self.mask = mask
        self.gpu = gpu
        self.lists: dict[str, tuple[list[_Key], list[_Key]]] = {}
        self.zones: list[str] = []
        self.nodes: set[str] = set()

    def key(self, node_id: str, f: list[int]) -> _Key:
        a, b, c, d = self.dims
        return (f[a], f[b], f[c], f[d], node_id)

    def live(self, f: list[int]) -> bool:
        return all(f[d] > 0 for d in self.mask)


class _Usage:
    """One plan step's ledger: free room per node, who holds what, and the node index."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        nodes = snap.nodes
        self.caps: dict[str, list[int]] = {nid: list(_vec(n.capacity)) for nid, n in nodes.items()}
        self.free: dict[str, list[int]] = {nid: list(c) for nid, c in self.caps.items()}
        self.holders: dict[str, dict[str, Replica]] = {nid: {} for nid in nodes}
        self.count: dict[str, int] = {}   # replicas a model keeps, for "never below minReplicas"
        for name, pl in snap.placements.items():
            spec = snap.specs.get(name)
            if spec is None:
                continue
            c, m, g, gm = _vec(spec.resources)
            keeps = 0
            for r in pl.replicas:
                f = self.free.get(r.node)
                if f is None:
                    continue
                f[0] -= c
                f[1] -= m
                f[2] -= g
                f[3] -= gm
                self.holders[r.node][name] = r
                node = nodes[r.node]
                if (r.role != "draining" and r.node in snap.healthy and not node.draining
                        and _selector_ok(spec, node)):
                    keeps += 1
            self.count[name] = keeps
        self.idle = {name: _idle(spec, snap) for name, spec in snap.specs.items()}
        self.idle_models = {m for m, i in self.idle.items() if i}
        self.zone = {nid: _zone(n) for nid, n in nodes.items()}
        self.order = sorted(nodes)
        self.sched = [nid for nid in self.order
                      if nid in snap.healthy and not nodes[nid].cordoned and not nodes[nid].draining]
        self.idle_nodes = [nid for nid in self.sched if any(self.idle.get(m) for m in self.holders[nid])]
        self.total_cpu = sum(nodes[nid].capacity.cpu_millis for nid in self.sched)
        self.total_mem = sum(nodes[nid].capacity.memory_bytes for nid in self.sched)
        self.pools: dict[tuple[tuple[tuple[str, str], ...], _Vec], _Pool] = {}
        self.member: dict[str, list[tuple[_Pool, list[_Key]]]] = {nid: [] for nid in self.sched}
        self.evicted: dict[str, dict[str, str]] = {}   # model -> replica id -> unplaced reason
        self.notes: dict[str, list[str]] = {}          # model -> reasons for the victim's plan
        self._floor: int | None = None
        self._victims: dict[str, tuple[bool, float, int, _Vec]] | None = None

    # -- the index ------------------------------------------------------------
    def pool(self, spec: ModelSpec) -> _Pool:
        r = spec.resources
        if _wants_gpu(r):
            dims: _Vec = (_GMEM, _GPUS, _CPU, _MEM) if r.gpu_memory_bytes else (_GPUS, _GMEM, _CPU, _MEM)
        elif r.memory_bytes * self.total_cpu > r.cpu_millis * self.total_mem:
            dims = (_MEM, _CPU, _GMEM, _GPUS)
        else:
            dims = (_CPU, _MEM, _GMEM, _GPUS)
        req = _vec(r)
        mask = tuple(d for d in range(4) if req[d] > 0)
        key = (tuple(sorted(spec.node_selector.items())), dims, mask)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = self._build(spec, dims, mask)
        return pool

    def _build(self, spec: ModelSpec, dims: _Vec, mask: tuple[int, ...]) -> _Pool:
        gpu = dims[0] in (_GMEM, _GPUS)
        pool = _Pool(dims, mask, gpu)
        for nid in self.sched:
            node = self.snap.nodes[nid]
            if not _selector_ok(spec, node):
                continue
            has_gpu = node.capacity.gpu_count > 0
            if gpu and not has_gpu:
                continue
            lst = pool.lists.setdefault(self.zone[nid], ([], []))[1 if has_gpu and not gpu else 0]
            if pool.live(self.free[nid]):
                lst.append(pool.key(nid, self.free[nid]))
            pool.nodes.add(nid)
            self.member[nid].append((pool, lst))
        for tiers in pool.lists.values():
            for lst in tiers:
                lst.sort()
        pool.zones = sorted(pool.lists)
        return pool

    def _add(self, node_id: str, v: _Vec, sign: int) -> None:
        f = self.free.get(node_id)
        if f is None:
            return
        member = self.member.get(node_id)
        if member:
            for pool, lst in member:
                key = pool.key(node_id, f)
                i = bisect_left(lst, key)
                if i < len(lst) and lst[i] == key:   # absent while not live
                    del lst[i]
        f[0] += sign * v[0]
        f[1] += sign * v[1]
        f[2] += sign * v[2]
        f[3] += sign * v[3]
        if member:
            for pool, lst in member:
                if pool.live(f):
                    insort(lst, pool.key(node_id, f))

    def take(self, node_id: str, spec: ModelSpec, replica: Replica | None = None) -> None:
        self._add(node_id, _vec(spec.resources), -1)
        if replica is not None and node_id in self.holders:
            self.holders[node_id][spec.name] = replica

    def release(self, node_id: str, spec: ModelSpec) -> None:
        self._add(node_id, _vec(spec.resources), 1)
        held = self.holders.get(node_id)
        if held is not None:
            held.pop(spec.name, None)

    def _zone_counts(self, taken: Iterable[str]) -> Counter[str | None]:
        return Counter(map(self.zone.get, taken))

    # -- choosing -------------------------------------------------------------
    def choose(self, spec: ModelSpec, taken: set[str]) -> str | None:
        """The best node with free room for one more replica, or None (see the module docstring)."""
        pool = self.pool(spec)
        req = _vec(spec.resources)
        first = (req[pool.dims[0]],)
        free = self.free
        if len(pool.zones) <= 1:
            groups = [pool.zones]
        else:
            zc = self._zone_counts(taken)
            levels: dict[int, list[str]] = {}
            for z in pool.zones:
                levels.setdefault(zc.get(z, 0), []).append(z)
            groups = [levels[k] for k in sorted(levels)]
        for group in groups:
            best: tuple[int, _Key] | None = None
            for z in group:
                for tier, lst in enumerate(pool.lists[z]):
                    hit = None
                    for key in islice(lst, bisect_left(lst, first), None):
                        if key[4] not in taken and _fits(req, free[key[4]]):
                            hit = key
                            break
                    if hit is not None:
                        if best is None or (tier, hit) < best:
                            best = (tier, hit)
                        break
            if best is not None:
                return best[1][4]
        return None

    def rejections(self, spec: ModelSpec, taken: set[str]) -> str:
        """Why no node takes one more replica: each node's reason, or counts per reason."""
        nodes = self.snap.nodes
        if not nodes:
            return "no nodes are registered"
        req = _vec(spec.resources)
        gpu = _wants_gpu(spec.resources)
        detail = len(nodes) <= DETAIL_NODES
        lines: list[str] = []
        counts: dict[str, int] = {}
        for nid in self.order:
            node = nodes[nid]
            if nid not in self.snap.healthy:
                kind, text = "unhealthy", "unhealthy"
            elif node.cordoned or node.draining:
                kind = text = "draining" if node.draining else "cordoned"
            elif nid in taken:
                kind, text = "taken", f"already runs a replica of {spec.name}"
            elif not _selector_ok(spec, node):
                kind, text = "selector", f"labels do not match nodeSelector {spec.node_selector}"
            elif gpu and node.capacity.gpu_count <= 0:
                kind, text = "no GPU", "no GPU"
            else:
                f = self.free[nid]
                if _fits(req, f):
                    continue
                kind = next(_DIM_NAMES[d] for d in (_GMEM, _GPUS, _CPU, _MEM) if req[d] > f[d])
                text = ", ".join(spec.resources.shortfall(Resources(*f))) if detail else ""
            if detail:
                lines.append(f"{nid}: {text}")
            else:
                counts[kind] = counts.get(kind, 0) + 1
        if detail:
            return "; ".join(lines) or "no node fits"
        labels = [("gpu memory", "short of gpu memory"), ("gpus", "short of gpus"), ("cpu", "short of cpu"),
                  ("memory", "short of memory"), ("no GPU", "without GPU"),
                  ("selector", f"not matching nodeSelector {spec.node_selector}"),
                  ("taken", f"already running {spec.name}"), ("unhealthy", "unhealthy"),
                  ("cordoned", "cordoned"), ("draining", "draining")]
        parts = [f"{counts[k]} {label}" for k, label in labels if counts.get(k)]
        return f"no node of {len(nodes)} fits: {', '.join(parts)}"

    # -- priority eviction and LRU unload -------------------------------------
    def _evict_floor(self) -> int | None:
        """The lowest priority among models that could lose a replica to eviction."""
        if self._floor is None:
            prios = [s.priority for m, s in self.snap.specs.items()
                     if not self.idle[m] and self.count.get(m, 0) > s.min_replicas]
            self._floor = min(prios) if prios else 1 << 30
        return self._floor

    def _victim_info(self) -> dict[str, tuple[bool, float, int, _Vec]]:
        """Per model: idle, its LRU order (idle) or priority, minReplicas, size."""
        if self._victims is None:
            self._victims = {m: (self.idle[m], _last_used(m, self.snap) if self.idle[m] else s.priority,
                                 s.min_replicas, _vec(s.resources)) for m, s in self.snap.specs.items()}
        return self._victims

    def preempt(self, spec: ModelSpec, taken: set[str]) -> tuple[str, list[str]] | None:
        """Make room for one replica by unloading idle models or evicting lower priorities.

        Returns the node and what went, or None when nothing may go. See the module docstring.
        """
        if self.idle[spec.name]:
            return None
        prio = spec.priority
        may_evict = self._evict_floor() < prio
        if not may_evict and not (self.idle_models - {spec.name}):
            return None
        pool = self.pool(spec)
        req = _vec(spec.resources)
        specs = self.snap.specs
        zc = self._zone_counts(taken)
        caps = self.caps
        victims = self._victim_info()
        best: tuple[tuple[object, ...], str, list[_Victim]] | None = None
        for nid in self.sched if may_evict else self.idle_nodes:   # full nodes (not in the lists) too
            if nid not in pool.nodes or nid in taken or not _fits(req, caps[nid]):
                continue
            cands: list[_Victim] = []
            fr = self.free[nid]
            c0, c1, c2, c3 = fr   # room with every candidate gone
            l0, l1, l2, l3 = fr   # room with every idle candidate gone
            for m, r in self.holders[nid].items():
                info = victims.get(m)
                if info is None or m == spec.name or r.role != "serving":
                    continue
                idle, order, floor, v = info
                if idle:
                    cands.append((0, order, m, r, v))
                    l0 += v[0]
                    l1 += v[1]
                    l2 += v[2]
                    l3 += v[3]
                elif may_evict and order < prio and self.count.get(m, 0) > floor:
                    cands.append((1, order, m, r, v))
                else:
                    continue
                c0 += v[0]
                c1 += v[1]
                c2 += v[2]
                c3 += v[3]
            if not cands or not _fits(req, [c0, c1, c2, c3]):
                continue
            if best is not None and not best[0][0] and not _fits(req, [l0, l1, l2, l3]):
                continue  # a node needing only unloads is known: one needing evictions cannot win
            cands.sort(key=lambda c: c[:3])
            f = list(self.free[nid])
            n = 0
            for cand in cands:   # lowest class, then priority / least recently used, first
                if _fits(req, f):
                    break
                v = cand[4]
                f = [f[0] + v[0], f[1] + v[1], f[2] + v[2], f[3] + v[3]]
                n += 1
            if not _fits(req, f):
                continue
            keep = [True] * n
            for i in range(n - 1, -1, -1):   # give back victims that were not needed
                v = cands[i][4]
                g = [f[0] - v[0], f[1] - v[1], f[2] - v[2], f[3] - v[3]]
                if _fits(req, g):
                    keep[i] = False
                    f = g
            chosen = [c for c, k in zip(cands[:n], keep) if k]
            evicted = [c[1] for c in chosen if c[0] == 1]
            unloaded = [c[1] for c in chosen if c[0] == 0]
            left = [f[0] - req[0], f[1] - req[1], f[2] - req[2], f[3] - req[3]]
            tier = 1 if caps[nid][_GPUS] > 0 and not pool.gpu else 0
            cost = (bool(evicted), max(evicted, default=0), len(evicted), len(unloaded),
                    max(unloaded, default=0.0), zc.get(self.zone[nid], 0), tier, pool.key(nid, left))
            if best is None or cost < best[0]:
                best = (cost, nid, chosen)
        if best is None:
            return None
        _, nid, chosen = best
        gone = []
        for kind, _, m, r, _v in chosen:
            self.release(nid, specs[m])
            self.count[m] = self.count.get(m, 0) - 1
            if kind == 0:
                text = f"unloaded while idle (LRU) for {spec.name}"
                gone.append(f"unloading idle {r.replica_id}")
            else:
                text = f"evicted for {spec.name} (priority {prio})"
                gone.append(f"evicting {r.replica_id} (priority {specs[m].priority})")
            self.evicted.setdefault(m, {})[r.replica_id] = text
            self.notes.setdefault(m, []).append(f"replica {r.replica_id} on {nid} {text}")
        self._floor = None
        return nid, gone


def _selector_ok(spec: ModelSpec, node: NodeInfo) -> bool:
    return all(node.labels.get(k) == v for k, v in spec.node_selector.items())


def _place_model(
    spec: ModelSpec, old: Placement | None, snap: Snapshot, used: _Usage
) -> tuple[Placement, list[str]]:
    why: list[str] = []
    kept: list[Replica] = []
    for r in _surviving(old, used):
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
    taken = {r.node for r in kept} | {r.node for r in draining} | {r.node for r in canaries}
    while len(kept) < want:
        node_id = used.choose(spec, taken)
        gone: list[str] = []
        if node_id is None:
            got = used.preempt(spec, taken)
            if got is None:
                break
            node_id, gone = got
        rid = f"{spec.name}-{next_id}"
        next_id += 1
        kept.append(Replica(rid, node_id, place_version))
        used.take(node_id, spec, kept[-1])
        taken.add(node_id)
        why.append(f"replica {rid} placed on {node_id}" + (f" after {', '.join(gone)}" if gone else ""))
    # One reason per missing replica: evicted/unloaded ones say for whom, the rest why no node fits.
    missing = want - len(kept)
    evicted = sorted(used.evicted.get(spec.name, {}).items(), key=lambda kv: _ordinal(kv[0]))
    unplaced = [text for _, text in evicted][:max(missing, 0)]
    if len(unplaced) < missing:
        if old is not None and len(old.unplaced) == missing:
            unplaced = list(old.unplaced)  # same shortfall: keep its wording (below), skip the scan
        else:
            unplaced += [used.rejections(spec, taken)] * (missing - len(unplaced))
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
        used.take(node_id, spec)
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
    if old is not None and len(old.unplaced) == len(unplaced):
        # Same shortfall as before: keep its wording, so a reason that changes only
        # because other models moved does not rewrite the placement (no churn).
        unplaced = list(old.unplaced)
    generation = spec.generation
    return Placement(spec.name, generation, tuple(kept), tuple(unplaced)), why


def _choose_node(
    spec: ModelSpec, snap: Snapshot, used: _Usage, taken: set[str]
) -> tuple[str | None, list[str]]:
    """The best node for one more replica (free room only; no eviction). The second
    item is kept for callers; ``_Usage.rejections`` says why when there is none."""
    return used.choose(spec, taken), []


def _surviving(old: Placement | None, used: _Usage) -> tuple[Replica, ...]:
    """The old replicas, less those evicted or unloaded for a model planned earlier."""
    if old is None:
        return ()
    gone = used.evicted.get(old.model)
    return old.replicas if not gone else tuple(r for r in old.replicas if r.replica_id not in gone)


def _release(used: _Usage, node_id: str, spec: ModelSpec) -> None:
    used.release(node_id, spec)


def _ordinal(replica_id: str) -> int:
    tail = replica_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1
