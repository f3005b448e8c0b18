"""The placement core, tested directly: table cases plus safety properties."""
from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.types import ModelLoad, ModelSpec, NodeInfo, Placement, Replica, Resources
from scheduler.placement import Snapshot, plan

GI = 1 << 30


def node(nid: str, cpu: int = 4000, mem: int = 16 * GI, cordoned: bool = False, **labels: str) -> NodeInfo:
    return NodeInfo(nid, f"{nid}:8001", f"{nid}:8000", Resources(cpu, mem), dict(labels), cordoned)


def spec(name: str, n: int = 1, cpu: int = 1000, mem: int = GI, maxr: int | None = None, **sel: str) -> ModelSpec:
    return ModelSpec(name, f"/models/{name}", n, maxr or max(n, 1), Resources(cpu, mem), node_selector=dict(sel),
                     generation=1)


def snap(specs: list[ModelSpec], nodes: list[NodeInfo], healthy: set[str] | None = None,
         placements: dict[str, Placement] | None = None) -> Snapshot:
    return Snapshot({s.name: s for s in specs}, {n.node_id: n for n in nodes},
                    frozenset(healthy if healthy is not None else {n.node_id for n in nodes}), placements or {})


def apply(s: Snapshot) -> Snapshot:
    p = plan(s)
    pls = {**s.placements, **p.placements}
    for m in p.deletions:
        pls.pop(m)
    return dataclasses.replace(s, placements=pls)


def nodes_of(s: Snapshot, model: str) -> list[str]:
    return sorted(r.node for r in s.placements[model].replicas)


def test_replicas_spread_over_distinct_nodes() -> None:
    s = apply(snap([spec("m", 2)], [node("a"), node("b"), node("c")]))
    assert len(set(nodes_of(s, "m"))) == 2


def test_capacity_respected_and_unplaced_reported() -> None:
    s = apply(snap([spec("big", 2, cpu=3000)], [node("a"), node("b", cpu=2000)]))
    assert nodes_of(s, "big") == ["a"]
    (reason,) = s.placements["big"].unplaced
    assert "b: cpu 3000m > free 2000m" in reason and "a: already runs a replica of big" in reason


def test_min_greater_than_cluster_reports_each_missing_replica() -> None:
    s = apply(snap([spec("m", 3)], [node("a")]))
    assert nodes_of(s, "m") == ["a"] and len(s.placements["m"].unplaced) == 2


def test_all_nodes_full() -> None:
    s = apply(snap([spec("x", 1, cpu=4000), spec("y", 1, cpu=1000)], [node("a")]))
    assert nodes_of(s, "x") == ["a"]
    assert s.placements["y"].replicas == () and "cpu 1000m > free 0m" in s.placements["y"].unplaced[0]


def test_cordoned_and_unhealthy_nodes_get_nothing_new() -> None:
    s = apply(snap([spec("m", 1)], [node("a", cordoned=True), node("b"), node("c")], healthy={"a", "c"}))
    assert nodes_of(s, "m") == ["c"]


def test_node_selector() -> None:
    s = apply(snap([spec("m", 1, zone="eu")], [node("a", zone="us"), node("b", zone="eu")]))
    assert nodes_of(s, "m") == ["b"]


def test_lost_node_replicas_are_replaced_elsewhere() -> None:
    s = apply(snap([spec("m", 2)], [node("a"), node("b"), node("c")]))
    lost = nodes_of(s, "m")[0]
    s2 = apply(dataclasses.replace(s, healthy=frozenset({"a", "b", "c"} - {lost})))
    assert lost not in nodes_of(s2, "m") and len(nodes_of(s2, "m")) == 2
    kept = set(nodes_of(s, "m")) - {lost}
    assert kept <= set(nodes_of(s2, "m"))  # the surviving replica did not move


def test_deleted_spec_deletes_placement() -> None:
    s = apply(snap([spec("m", 1)], [node("a")]))
    p = plan(dataclasses.replace(s, specs={}))
    assert p.deletions == ("m",)


def test_scale_down_removes_newest() -> None:
    s = apply(snap([spec("m", 3)], [node("a"), node("b"), node("c")]))
    ids = sorted(r.replica_id for r in s.placements["m"].replicas)
    s2 = apply(dataclasses.replace(s, specs={"m": spec("m", 1)}))
    assert [r.replica_id for r in s2.placements["m"].replicas] == ids[:1]


def test_new_artifact_without_spare_node_reloads_in_place_once_ready() -> None:
    s = apply(snap([spec("m", 1)], [node("a")]))
    new = dataclasses.replace(spec("m", 1), storage_uri="/models/m-v2")
    waiting = apply(dataclasses.replace(s, specs={"m": new}))  # replica not ready yet: wait
    assert waiting.placements["m"].replicas == s.placements["m"].replicas
    s2 = apply(dataclasses.replace(waiting, ready=frozenset({("a", "m")})))
    assert s2.placements["m"].replicas[0].version == new.version != s.placements["m"].replicas[0].version


def _ready_all(s: Snapshot) -> Snapshot:
    return dataclasses.replace(s, ready=frozenset((r.node, m) for m, pl in s.placements.items() for r in pl.replicas))


def _versions(s: Snapshot, model: str = "m") -> list[tuple[str, str, str]]:
    return sorted((r.node, r.version, r.role) for r in s.placements[model].replicas)


def test_rolling_update_one_at_a_time_with_surge() -> None:
    v1 = spec("m", 2)
    v2 = dataclasses.replace(v1, storage_uri="/models/m-v2")
    s = _ready_all(apply(snap([v1], [node("a"), node("b"), node("c")])))
    s = apply(dataclasses.replace(s, specs={"m": v2}))
    roles = [role for _, _, role in _versions(s)]
    assert roles.count("draining") == 1 and len(roles) == 3   # one old drains beside its replacement
    assert sum(1 for _, v, _ in _versions(s) if v == v2.version) == 1
    s = apply(s)  # replacement not ready: nothing moves
    assert len(s.placements["m"].replicas) == 3
    for _ in range(6):
        s = apply(_ready_all(s))
    assert {v for _, v, _ in _versions(s)} == {v2.version} and len(s.placements["m"].replicas) == 2
    assert all(role == "serving" for _, _, role in _versions(s))


def test_canary_then_promote_then_done() -> None:
    v1 = spec("m", 2)
    s = _ready_all(apply(snap([v1], [node("a"), node("b"), node("c")])))
    v2 = dataclasses.replace(v1, storage_uri="/models/m-v2", canary_traffic_percent=20)
    s = _ready_all(apply(dataclasses.replace(s, specs={"m": v2})))
    vs = _versions(s)
    assert [(v, r) for _, v, r in vs].count((v2.version, "canary")) == 1
    assert [(v, r) for _, v, r in vs].count((v1.version, "serving")) == 2
    assert apply(s).placements == s.placements  # stable while the canary runs
    promoted = dataclasses.replace(v2, canary_traffic_percent=None)
    s = apply(dataclasses.replace(s, specs={"m": promoted}))
    for _ in range(8):
        s = apply(_ready_all(s))
    assert {v for _, v, _ in _versions(s)} == {v2.version} and len(s.placements["m"].replicas) == 2


def test_canary_rollback_removes_canaries() -> None:
    v1 = spec("m", 2)
    s = _ready_all(apply(snap([v1], [node("a"), node("b"), node("c")])))
    v2 = dataclasses.replace(v1, storage_uri="/models/m-v2", canary_traffic_percent=50)
    s = _ready_all(apply(dataclasses.replace(s, specs={"m": v2})))
    assert len(s.placements["m"].replicas) == 3
    s = apply(dataclasses.replace(s, specs={"m": v1}))
    assert _versions(s) == sorted((n, v1.version, "serving") for n in nodes_of(s, "m"))
    assert len(s.placements["m"].replicas) == 2


def test_canary_without_spare_node_converts_one_stable() -> None:
    v1 = spec("m", 2)
    s = _ready_all(apply(snap([v1], [node("a"), node("b")])))
    v2 = dataclasses.replace(v1, storage_uri="/models/m-v2", canary_traffic_percent=10)
    s = apply(dataclasses.replace(s, specs={"m": v2}))
    assert sorted((v, r) for _, v, r in _versions(s)) == sorted([(v1.version, "serving"), (v2.version, "canary")])


def test_node_lost_mid_rollout_replaces_at_stable_version() -> None:
    v1 = spec("m", 2)
    s = _ready_all(apply(snap([v1], [node("a"), node("b"), node("c"), node("d")])))
    v2 = dataclasses.replace(v1, storage_uri="/models/m-v2", canary_traffic_percent=10)
    s = _ready_all(apply(dataclasses.replace(s, specs={"m": v2})))
    stable_node = next(n for n, v, r in _versions(s) if r == "serving")
    s = apply(dataclasses.replace(s, healthy=frozenset({"a", "b", "c", "d"} - {stable_node})))
    vs = _versions(s)
    assert [(v, r) for _, v, r in vs].count((v1.version, "serving")) == 2
    assert stable_node not in [n for n, _, _ in vs]


# -- properties ----------------------------------------------------------------
cluster = st.lists(st.tuples(st.integers(0, 8000), st.booleans(), st.booleans()), min_size=1, max_size=8)
models = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3000)), min_size=1, max_size=10)


@settings(max_examples=150, deadline=None)
@given(cluster, models)
def test_properties_never_overcommit_never_bad_nodes_idempotent(nodes_raw, models_raw) -> None:  # type: ignore[no-untyped-def]
    nodes = [node(f"n{i}", cpu=c, cordoned=cord) for i, (c, cord, _) in enumerate(nodes_raw)]
    healthy = {f"n{i}" for i, (_, _, h) in enumerate(nodes_raw) if h}
    specs = [spec(f"m{i}", n, cpu=c, mem=0) for i, (n, c) in enumerate(models_raw)]
    s = apply(snap(specs, nodes, healthy))
    used: dict[str, int] = {}
    for name, pl in s.placements.items():
        assert len({r.node for r in pl.replicas}) == len(pl.replicas)  # one replica per node
        assert len(pl.replicas) + len(pl.unplaced) == s.specs[name].min_replicas
        for r in pl.replicas:
            assert r.node in healthy and not s.nodes[r.node].cordoned
            used[r.node] = used.get(r.node, 0) + s.specs[name].resources.cpu_millis
    for nid, cpu in used.items():
        assert cpu <= s.nodes[nid].capacity.cpu_millis
    again = plan(s)
    assert again.placements == {} and again.deletions == ()


def _drain(s: Snapshot, nid: str) -> Snapshot:
    nodes = dict(s.nodes)
    nodes[nid] = dataclasses.replace(nodes[nid], cordoned=True, draining=True)
    return dataclasses.replace(s, nodes=nodes)


def test_drain_keeps_old_replica_until_replacement_ready() -> None:
    s = apply(snap([spec("m", 1)], [node("a"), node("b")]))
    (first,) = nodes_of(s, "m")
    other = "b" if first == "a" else "a"
    s = apply(_drain(s, first))
    roles = {r.node: r.role for r in s.placements["m"].replicas}
    assert roles == {first: "draining", other: "serving"}
    s = apply(s)  # replacement not ready yet: nothing changes
    assert {r.node: r.role for r in s.placements["m"].replicas} == roles
    s = apply(dataclasses.replace(s, ready=frozenset({(other, "m")})))
    assert nodes_of(s, "m") == [other]


def test_drain_with_nowhere_to_go_keeps_serving_and_says_why() -> None:
    s = apply(snap([spec("m", 1)], [node("a")]))
    s = apply(_drain(s, "a"))
    assert [(r.node, r.role) for r in s.placements["m"].replicas] == [("a", "draining")]
    assert "a: draining" in s.placements["m"].unplaced[0]


# -- issue 5: bin-packing, GPUs, zone spread, priority, LRU unload ---------------
def gnode(nid: str, gpus: int = 0, gmem_gi: int = 0, cpu: int = 16000, mem: int = 64 * GI, **labels: str) -> NodeInfo:
    return NodeInfo(nid, f"{nid}:8001", f"{nid}:8000", Resources(cpu, mem, gpus, gmem_gi * GI), dict(labels))


def model(name: str, n: int = 1, cpu: int = 1000, mem: int = GI, gpus: int = 0, gmem_gi: int = 0, prio: int = 0,
          idle_ok: bool = False, maxr: int | None = None, **sel: str) -> ModelSpec:
    return ModelSpec(name, f"/models/{name}", n, maxr or max(n, 1), Resources(cpu, mem, gpus, gmem_gi * GI),
                     node_selector=dict(sel), generation=1, priority=prio, unload_when_idle=idle_ok)


def place(models: list[ModelSpec], nodes: list[NodeInfo], **extra: object) -> Snapshot:
    return apply(dataclasses.replace(snap(models, nodes), **extra))  # type: ignore[arg-type]


def with_specs(s: Snapshot, *models: ModelSpec, drop: tuple[str, ...] = (), **extra: object) -> Snapshot:
    specs = {**{m: v for m, v in s.specs.items() if m not in drop}, **{m.name: m for m in models}}
    return dataclasses.replace(s, specs=specs, **extra)  # type: ignore[arg-type]


def assert_fixed_point(s: Snapshot) -> None:
    again = plan(s)
    assert again.placements == {} and again.deletions == ()


GPU_CASES = [  # (nodes, model, expected nodes)
    ([gnode("cpu"), gnode("g24", 1, 24)], model("m", gpus=1, gmem_gi=20), ["g24"]),
    ([gnode("cpu"), gnode("g24", 1, 24), gnode("g80", 1, 80)], model("m", gpus=1, gmem_gi=40), ["g80"]),
    ([gnode("cpu"), gnode("g24", 1, 24), gnode("g80", 1, 80)], model("m", gpus=1, gmem_gi=20), ["g24"]),  # best fit
    ([gnode("cpu"), gnode("g24", 1, 24)], model("m", gpus=1), ["g24"]),                 # GPU count only
    ([gnode("cpu"), gnode("g24", 1, 24)], model("m", gmem_gi=10), ["g24"]),             # GPU memory only
    ([gnode("cpu", cpu=64000), gnode("g24", 1, 24, cpu=2000)], model("m"), ["cpu"]),  # CPU spec avoids GPU nodes
    ([gnode("g24", 1, 24, cpu=4000), gnode("g80", 4, 320, cpu=4000)], model("m", cpu=500), ["g24"]),
    ([gnode("g80", 4, 320, cpu=2000), gnode("cpu", cpu=1000)], model("m", cpu=1500), ["g80"]),  # falls back
]


def test_gpu_and_best_fit_table() -> None:
    for nodes, m, want in GPU_CASES:
        assert nodes_of(place([m], nodes), m.name) == want, (m.resources, want)


def test_gpu_spec_never_on_cpu_nodes_and_says_why() -> None:
    s = place([model("m", 2, gpus=1, gmem_gi=8)], [gnode("cpu1"), gnode("cpu2"), gnode("g", 1, 24)])
    assert nodes_of(s, "m") == ["g"]
    (reason,) = s.placements["m"].unplaced
    assert "cpu1: no GPU" in reason and "cpu2: no GPU" in reason and "g: already runs a replica of m" in reason


def test_best_fit_packs_small_on_small_gpus() -> None:
    # Worst fit would put the 20Gi model on the 80Gi node and leave the 70Gi model nowhere to go.
    s = place([model("a-small", gpus=1, gmem_gi=20), model("b-big", gpus=1, gmem_gi=70)],
              [gnode("g24", 1, 24), gnode("g80", 1, 80)])
    assert nodes_of(s, "a-small") == ["g24"] and nodes_of(s, "b-big") == ["g80"]


def test_all_gpus_full_reports_gpu_shortfall() -> None:
    s = place([model("a", gpus=1, gmem_gi=24), model("b", gpus=1, gmem_gi=8)], [gnode("g", 1, 24)])
    assert nodes_of(s, "a") == ["g"] and s.placements["b"].replicas == ()
    assert "gpus 1 > free 0" in s.placements["b"].unplaced[0]


def test_never_overcommits_gpu_count_even_with_memory_left() -> None:
    s = place([model("a", gpus=1, gmem_gi=10), model("b", gpus=1, gmem_gi=10)], [gnode("g", 1, 80)])
    assert [len(s.placements[m].replicas) for m in ("a", "b")] == [1, 0]


ZONE_NODES = [gnode("a1", zone="za"), gnode("a2", zone="za"), gnode("b1", zone="zb"), gnode("b2", zone="zb")]
K8S_ZONE_NODES = [gnode(n.node_id, **{"topology.kubernetes.io/zone": n.labels["zone"]}) for n in ZONE_NODES]


def zones_of(s: Snapshot, m: str) -> list[str]:
    return sorted(s.nodes[n].labels.get("zone") or s.nodes[n].labels["topology.kubernetes.io/zone"]
                  for n in nodes_of(s, m))


def test_zone_spread_two_zones_two_nodes() -> None:
    for nodes in (ZONE_NODES, K8S_ZONE_NODES):
        for n, want in ((1, ["za"]), (2, ["za", "zb"]), (3, ["za", "za", "zb"]), (4, ["za", "za", "zb", "zb"])):
            assert zones_of(place([model("m", n)], nodes), "m") == want


def test_zone_spread_fills_the_emptier_zone_even_if_worse_fit() -> None:
    nodes = [gnode("a1", zone="za", cpu=2000), gnode("b1", zone="zb", cpu=64000), gnode("a2", zone="za", cpu=2000)]
    s = place([model("m", 1)], nodes)
    assert nodes_of(s, "m") == ["a1"]  # tightest fit
    s = apply(with_specs(s, model("m", 2)))
    assert nodes_of(s, "m") == ["a1", "b1"]  # zb has none yet, even though a2 fits tighter


def test_zone_spread_falls_back_when_a_zone_is_full() -> None:
    nodes = [gnode("a1", zone="za"), gnode("a2", zone="za"), gnode("b1", zone="zb", cpu=500)]
    assert zones_of(place([model("m", 2)], nodes), "m") == ["za", "za"]


def _idle_load(**last: float) -> dict[str, ModelLoad]:
    return {m: ModelLoad(last_request_at=t) for m, t in last.items()}


PRIORITY_CASES = [
    # (existing models with desired counts, newcomer, expected evicted model or None)
    # victim above its min: evicted
    ([(model("low", 1, cpu=16000, maxr=2), 2)], model("high", 1, cpu=16000, prio=10), "low"),
    # victim at its min: never
    ([(model("low", 2, cpu=16000), 2)], model("high", 1, cpu=16000, prio=10), None),
    # equal priority: never
    ([(model("peer", 1, cpu=16000, maxr=2), 2)], model("high", 1, cpu=16000), None),
    # higher priority victim: never
    ([(model("top", 1, cpu=16000, maxr=2, prio=20), 2)], model("high", 1, cpu=16000, prio=10), None),
    # two victims above min, the newcomer needs two nodes: only one may go (the other model stays at min)
    ([(model("low", 1, cpu=16000, maxr=2), 2)], model("high", 2, cpu=16000, prio=10), "low"),
]


def test_priority_eviction_table() -> None:
    for existing, newcomer, victim in PRIORITY_CASES:
        desired = {m.name: n for m, n in existing}
        s = place([m for m, _ in existing], [gnode("n1"), gnode("n2")], desired=desired)
        before = {m: nodes_of(s, m) for m in desired}
        p = plan(with_specs(s, newcomer))
        s2 = apply(with_specs(s, newcomer))
        if victim is None:
            assert {m: nodes_of(s2, m) for m in desired} == before
            assert s2.placements[newcomer.name].replicas == ()
            assert_fixed_point(s2)
            continue
        assert len(nodes_of(s2, victim)) == s.specs[victim].min_replicas == 1
        assert len(s2.placements[newcomer.name].replicas) == 1
        assert s2.placements[victim].unplaced == (f"evicted for high (priority {newcomer.priority})",)
        assert any("evicted for high (priority 10)" in r for r in p.reasons[victim])
        assert any(f"evicting {victim}-" in r for r in p.reasons["high"])
        assert_fixed_point(s2)


def test_eviction_picks_lowest_priority_then_fewest() -> None:
    nodes = [gnode("n1"), gnode("n2"), gnode("n3")]
    olds = [model("p1", 1, cpu=16000, maxr=2, prio=1), model("p5", 1, cpu=16000, maxr=2, prio=5)]
    # p1 on two nodes, p5 on one: the newcomer must evict p1 (lowest priority), not p5.
    s = place(olds, nodes, desired={"p1": 2, "p5": 1})
    s = dataclasses.replace(s, specs={**s.specs, "p5": model("p5", 0, cpu=16000, maxr=2, prio=5)})
    s2 = apply(with_specs(s, model("high", 1, cpu=16000, prio=10)))
    assert len(s2.placements["p1"].replicas) == 1 and len(s2.placements["p5"].replicas) == 1
    # Fewest evictions: a node where one eviction is enough beats one needing two.
    ms = {m.name: m for m in (model("s0", 1, cpu=8000, maxr=2), model("s1", 1, cpu=8000, maxr=2),
                              model("big", 1, cpu=16000, maxr=2))}
    where = {"s0": ("n1", "n3"), "s1": ("n1", "n3"), "big": ("n2", "n4")}
    pls = {m: Placement(m, 1, tuple(Replica(f"{m}-{i}", n, ms[m].version) for i, n in enumerate(where[m])))
           for m in ms}
    s = dataclasses.replace(snap(list(ms.values()), [gnode(f"n{i}") for i in range(1, 5)], placements=pls),
                            desired={m: 2 for m in ms})
    assert_fixed_point(s)
    s2 = apply(with_specs(s, model("high", 1, cpu=16000, prio=10)))
    evicted = [m for m in ("s0", "s1", "big") if len(s2.placements[m].replicas) < len(s.placements[m].replicas)]
    assert len(evicted) == 1, evicted


def test_evicted_replica_moves_to_free_room_if_any() -> None:
    fast = [gnode("n1", fast="yes"), gnode("n2", fast="yes")]
    s = place([model("low", 1, cpu=8000, maxr=2)], fast, desired={"low": 2})
    assert nodes_of(s, "low") == ["n1", "n2"]
    slow = gnode("n3", cpu=8000)
    s = dataclasses.replace(s, nodes={**s.nodes, "n3": slow}, healthy=s.healthy | {"n3"})
    assert_fixed_point(s)  # a new node moves nothing
    p = plan(with_specs(s, model("high", 1, cpu=16000, prio=10, fast="yes")))
    s = apply(with_specs(s, model("high", 1, cpu=16000, prio=10, fast="yes")))
    assert len(nodes_of(s, "high")) == 1 and "n3" in nodes_of(s, "low") and len(nodes_of(s, "low")) == 2
    assert s.placements["low"].unplaced == ()
    assert any("evicted for high (priority 10)" in r for r in p.reasons["low"])
    assert_fixed_point(s)


def test_lru_unloads_only_idle_opt_in_models() -> None:
    nodes = [gnode("g", 1, 24)]
    cases = [  # (resident, load, now, unloaded?)
        (model("old", gpus=1, gmem_gi=20, idle_ok=True), _idle_load(old=100.0), 1000.0, True),
        (model("old", gpus=1, gmem_gi=20, idle_ok=False), _idle_load(old=100.0), 1000.0, False),   # not opted in
        (model("old", gpus=1, gmem_gi=20, idle_ok=True), _idle_load(old=980.0), 1000.0, False),    # used 20 s ago
        (model("old", gpus=1, gmem_gi=20, idle_ok=True), {"old": ModelLoad(in_flight=0.5, last_request_at=100.0)},
         1000.0, False),                                                                           # in flight
        (model("old", gpus=1, gmem_gi=20, idle_ok=True), {"old": ModelLoad(held=2, last_request_at=100.0)},
         1000.0, False),                                                                           # held: on demand
        (model("old", gpus=1, gmem_gi=20, idle_ok=True), {}, 1000.0, True),                        # never used
    ]
    for resident, load, now, unloaded in cases:
        s = place([resident], nodes, load=load, now=now)
        s = apply(with_specs(s, model("new", gpus=1, gmem_gi=20)))
        assert (nodes_of(s, "new") == ["g"]) is unloaded, (resident, load)
        assert (nodes_of(s, "old") == []) is unloaded
        if unloaded:  # even below its minReplicas (1)
            assert s.placements["old"].unplaced == ("unloaded while idle (LRU) for new",)
        assert_fixed_point(s)


def test_lru_order_and_comeback() -> None:
    nodes = [gnode("g1", 1, 24), gnode("g2", 1, 24)]
    olds = [model("a", gpus=1, gmem_gi=20, idle_ok=True), model("b", gpus=1, gmem_gi=20, idle_ok=True)]
    for last_a, last_b, gone in ((100.0, 500.0, "a"), (500.0, 100.0, "b")):
        s = place(olds, nodes, load=_idle_load(a=last_a, b=last_b), now=1000.0)
        p = plan(with_specs(s, model("x", gpus=1, gmem_gi=20)))
        s2 = apply(with_specs(s, model("x", gpus=1, gmem_gi=20)))
        assert s2.placements[gone].replicas == () and len(s2.placements["x"].replicas) == 1
        assert any("unloaded while idle (LRU) for x" in r for r in p.reasons[gone])
        assert_fixed_point(s2)
        # Room again (x deleted): the unloaded model comes back.
        s3 = apply(with_specs(s2, drop=("x",)))
        assert len(s3.placements[gone].replicas) == 1


def test_idle_model_does_not_unload_or_evict_to_come_back() -> None:
    nodes = [gnode("g", 1, 24)]
    s = place([model("a", gpus=1, gmem_gi=20, idle_ok=True)], nodes, load=_idle_load(a=0.0), now=1000.0)
    s = apply(with_specs(s, model("b", gpus=1, gmem_gi=20, idle_ok=True, prio=-5),
                         load={**_idle_load(a=0.0), "b": ModelLoad(in_flight=1.0, last_request_at=999.0)}))
    assert nodes_of(s, "b") == ["g"] and nodes_of(s, "a") == []
    # Now b goes quiet and a (higher priority, idle) has no traffic: nobody moves.
    s = dataclasses.replace(s, load=_idle_load(a=0.0, b=900.0), now=2000.0)
    assert_fixed_point(s)
    # a is busy again (held requests): it unloads idle b.
    s = apply(dataclasses.replace(s, load={**_idle_load(b=900.0), "a": ModelLoad(held=3, last_request_at=2000.0)}))
    assert nodes_of(s, "a") == ["g"] and s.placements["b"].unplaced == ("unloaded while idle (LRU) for a",)


def test_large_cluster_reason_counts_per_cause() -> None:
    nodes = [gnode(f"c{i:02d}") for i in range(8)] + [gnode(f"g{i:02d}", 1, 24) for i in range(4)]
    s = place([model("m", 6, gpus=1, gmem_gi=20)], nodes, healthy=frozenset(n.node_id for n in nodes[1:]))
    (reason,) = s.placements["m"].unplaced[:1]
    assert reason == "no node of 12 fits: 7 without GPU, 4 already running m, 1 unhealthy"
    assert len(s.placements["m"].unplaced) == 2


# -- properties ------------------------------------------------------------------
gnodes = st.lists(st.tuples(st.sampled_from([(0, 0), (1, 24), (4, 320)]), st.integers(0, 16000),
                            st.sampled_from(["za", "zb", ""]), st.booleans(), st.booleans(), st.booleans()),
                  min_size=1, max_size=8)
gmodels = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.sampled_from([(0, 0), (1, 0), (1, 20), (2, 100)]),
                             st.integers(0, 6000), st.integers(-1, 2), st.booleans(), st.booleans(),
                             st.sampled_from([None, 0.0, 990.0])),
                   min_size=1, max_size=8)


def _world(nodes_raw, models_raw, now: float = 1000.0) -> Snapshot:  # type: ignore[no-untyped-def]
    nodes, healthy = [], set()
    for i, ((gpus, gmem), cpu, zone, cord, up, pool) in enumerate(nodes_raw):
        labels = {"zone": zone} if zone else {}
        if pool:
            labels["pool"] = "x"
        nodes.append(dataclasses.replace(gnode(f"n{i}", gpus, gmem, cpu=cpu, mem=64 * GI, **labels), cordoned=cord))
        if up:
            healthy.add(f"n{i}")
    specs, load, desired = [], {}, {}
    for i, (n, extra, (gpus, gmem), cpu, prio, idle_ok, sel, last) in enumerate(models_raw):
        name = f"m{i}"
        specs.append(model(name, n, cpu=cpu, mem=GI, gpus=gpus, gmem_gi=gmem, prio=prio, idle_ok=idle_ok,
                           maxr=n + extra, **({"pool": "x"} if sel else {})))
        desired[name] = n + extra
        if last is not None:
            load[name] = ModelLoad(last_request_at=last)
    return dataclasses.replace(snap(specs, nodes, healthy), desired=desired, load=load, now=now)


def _check_safe(s: Snapshot) -> None:
    used: dict[str, list[int]] = {}
    for name, pl in s.placements.items():
        spec_ = s.specs[name]
        assert len({r.node for r in pl.replicas}) == len(pl.replicas)                   # one replica per node
        assert len(pl.replicas) + len(pl.unplaced) == s.desired.get(name, spec_.min_replicas)
        r = spec_.resources
        for rep in pl.replicas:
            nd = s.nodes[rep.node]
            assert rep.node in s.healthy and not nd.cordoned
            assert all(nd.labels.get(k) == v for k, v in spec_.node_selector.items())
            if r.gpu_count or r.gpu_memory_bytes:
                assert nd.capacity.gpu_count > 0
            u = used.setdefault(rep.node, [0, 0, 0, 0])
            for j, v in enumerate((r.cpu_millis, r.memory_bytes, r.gpu_count, r.gpu_memory_bytes)):
                u[j] += v
    for nid, u in used.items():
        c = s.nodes[nid].capacity
        assert u[0] <= c.cpu_millis and u[1] <= c.memory_bytes and u[2] <= c.gpu_count and u[3] <= c.gpu_memory_bytes


@settings(max_examples=150, deadline=None)
@given(gnodes, gmodels, st.data())
def test_properties_all_rules_safe_and_idempotent(nodes_raw, models_raw, data) -> None:  # type: ignore[no-untyped-def]
    s = apply(_world(nodes_raw, models_raw))
    _check_safe(s)
    assert_fixed_point(s)
    # Change the world (a node lost, demand and load shift, a model busy again) and replan: still safe, still fixed.
    lost = data.draw(st.sampled_from(sorted(s.nodes)))
    busy = data.draw(st.sampled_from(sorted(s.specs)))
    desired = {m: data.draw(st.integers(s.specs[m].min_replicas, s.specs[m].max_replicas)) for m in sorted(s.specs)}
    s = apply(dataclasses.replace(s, healthy=s.healthy - {lost}, desired=desired,
                                  load={**s.load, busy: ModelLoad(held=1, last_request_at=1000.0)}))
    _check_safe(s)
    assert_fixed_point(s)


def _moved(before: Snapshot, after: Snapshot) -> list[str]:
    out = []
    for m, pl in before.placements.items():
        if m not in after.placements:
            continue
        now = {(r.replica_id, r.node) for r in after.placements[m].replicas}
        out += [r.replica_id for r in pl.replicas if (r.replica_id, r.node) not in now]
    return out


@settings(max_examples=150, deadline=None)
@given(gnodes, gmodels, st.sampled_from([(0, 0), (1, 24), (4, 320)]), st.integers(0, 6000), st.integers(1, 3))
def test_properties_no_churn_on_unrelated_model_or_node(nodes_raw, models_raw, gpu, cpu, n) -> None:  # type: ignore[no-untyped-def]
    s = apply(_world(nodes_raw, models_raw))
    # A node added moves nothing.
    extra = gnode("zz-new", gpu[0], gpu[1], cpu=cpu, zone="za")
    s2 = apply(dataclasses.replace(s, nodes={**s.nodes, "zz-new": extra}, healthy=s.healthy | {"zz-new"}))
    assert _moved(s, s2) == []
    # A model added moves nothing, as long as it may not evict (lowest priority) or unload (nothing idle).
    quiet = dataclasses.replace(s, load={m: ModelLoad(in_flight=1.0) for m in s.specs})
    quiet = apply(quiet)
    low = min(sp.priority for sp in s.specs.values())
    s3 = apply(with_specs(quiet, model("zz-added", n, cpu=cpu, prio=low)))
    assert _moved(quiet, s3) == []
    # And a model removed moves nothing else, except that a higher-priority model that was
    # waiting for room may now evict (and says so).
    gone = sorted(quiet.specs)[0]
    p4 = plan(with_specs(quiet, drop=(gone,)))
    s4 = apply(with_specs(quiet, drop=(gone,)))
    for rid in _moved(quiet, s4):
        m = rid.rsplit("-", 1)[0]
        assert m == gone or any(f"replica {rid} on " in r and "evicted for" in r for r in p4.reasons[m]), rid
