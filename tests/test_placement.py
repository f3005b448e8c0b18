"""The placement core, tested directly: table cases plus safety properties."""
from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.types import ModelSpec, NodeInfo, Placement, Resources
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
