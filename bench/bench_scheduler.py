"""Placement core at scale: plan time, packing quality, churn.

    .venv/bin/python bench/bench_scheduler.py [--quick]

Synthetic clusters (seeded, so runs compare): nodes are 40% CPU-only (16 cores,
64Gi), 20% 1x24GiB GPU (16 cores, 64Gi), 25% 4x80GiB (64 cores, 512Gi), 15%
8x80GiB (96 cores, 1Ti), in three zones; models draw a shape (three CPU-only,
four GPU, 1 to 4 GPUs and 20 to 300GiB of GPU memory) and a replica count
(1 to 50, at most a tenth of the nodes), about ten replicas per node, with GPU
demand at about 90% of the GPUs. Per size it prints:

* cold: plan from no placements; warm: replan of the planned (stable) state;
* quality: GPU memory and GPUs in use, CPU in use, replicas left unplaced;
* churn: existing replicas moved by an unrelated change: one model added, one
  node added, one model removed (each should be 0).

The last size asks for half again as many replicas as fit (1,000 nodes, 15,000
replicas), so the unplaced path (reasons counted per cause) is timed too.
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import time

from mesh.types import ModelSpec, NodeInfo, Resources
from scheduler.placement import Snapshot, plan

GI = 1 << 30
NODE_KINDS = [  # weight, cores, memory GiB, gpus, gpu memory GiB per GPU
    (40, 16, 64, 0, 0), (20, 16, 64, 1, 24), (25, 64, 512, 4, 80), (15, 96, 1024, 8, 80),
]
SHAPES = [  # weight, millicores, memory GiB, gpus, gpu memory GiB
    (35, 500, 1, 0, 0), (30, 2000, 4, 0, 0), (18, 4000, 16, 0, 0),
    (8, 2000, 8, 1, 20), (6, 4000, 32, 1, 60), (2, 8000, 64, 2, 150), (1, 16000, 128, 4, 300),
]
COUNTS = [1, 1, 2, 2, 3, 5, 8, 10, 20, 50]


def make_nodes(n: int, rng: random.Random) -> dict[str, NodeInfo]:
    out = {}
    for i in range(n):
        _, cores, mem, gpus, gmem = rng.choices(NODE_KINDS, weights=[k[0] for k in NODE_KINDS])[0]
        nid = f"node-{i:05d}"
        out[nid] = NodeInfo(nid, f"{nid}:8001", f"{nid}:8000",
                            Resources(cores * 1000, mem * GI, gpus, gpus * gmem * GI), {"zone": f"z{i % 3}"})
    return out


def make_specs(replicas: int, nodes: int, rng: random.Random, prefix: str = "m") -> dict[str, ModelSpec]:
    out: dict[str, ModelSpec] = {}
    total = 0
    cap = max(1, nodes // 10)
    while total < replicas:
        _, cpu, mem, gpus, gmem = rng.choices(SHAPES, weights=[s[0] for s in SHAPES])[0]
        n = min(rng.choice(COUNTS), cap, replicas - total)
        name = f"{prefix}{len(out):05d}"
        out[name] = ModelSpec(name, f"/models/{name}", n, n, Resources(cpu, mem * GI, gpus, gmem * GI), generation=1)
        total += n
    return out


def applied(s: Snapshot) -> Snapshot:
    p = plan(s)
    pls = {**s.placements, **p.placements}
    for m in p.deletions:
        pls.pop(m)
    return dataclasses.replace(s, placements=pls)


def moved(before: Snapshot, after: Snapshot) -> int:
    """Replicas of models present in both whose node changed or that went away."""
    n = 0
    for m, pl in before.placements.items():
        if m not in after.placements:
            continue
        now = {(r.replica_id, r.node) for r in after.placements[m].replicas}
        n += sum(1 for r in pl.replicas if (r.replica_id, r.node) not in now)
    return n


def timed(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def quality(s: Snapshot) -> tuple[float, float, float, int, int]:
    cap = [0, 0, 0]
    used = [0, 0, 0]
    for node in s.nodes.values():
        cap[0] += node.capacity.gpu_memory_bytes
        cap[1] += node.capacity.gpu_count
        cap[2] += node.capacity.cpu_millis
    placed = unplaced = 0
    for m, pl in s.placements.items():
        r = s.specs[m].resources
        k = len(pl.replicas)
        placed += k
        unplaced += len(pl.unplaced)
        used[0] += k * r.gpu_memory_bytes
        used[1] += k * r.gpu_count
        used[2] += k * r.cpu_millis
    return used[0] / cap[0], used[1] / cap[1], used[2] / cap[2], placed, unplaced


def run(nodes_n: int, replicas: int, repeat: int) -> None:
    rng = random.Random(nodes_n * 7919 + replicas)
    nodes = make_nodes(nodes_n, rng)
    specs = make_specs(replicas, nodes_n, rng)
    empty = Snapshot(specs, nodes, frozenset(nodes), {})
    cold = timed(lambda: plan(empty), repeat)
    state = applied(empty)
    warm = timed(lambda: plan(state), repeat)
    again = plan(state)
    gmem, gpus, cpu, placed, unplaced = quality(state)

    extra = make_specs(2, nodes_n, random.Random(1), prefix="new")
    add_model = applied(dataclasses.replace(state, specs={**specs, **extra}))
    nid = "node-new"
    new_node = NodeInfo(nid, f"{nid}:8001", f"{nid}:8000", Resources(64000, 512 * GI, 4, 320 * GI), {"zone": "z0"})
    add_node = applied(dataclasses.replace(state, nodes={**nodes, nid: new_node}, healthy=frozenset(nodes) | {nid}))
    gone = sorted(specs)[len(specs) // 2]
    rm_model = applied(dataclasses.replace(state, specs={m: s for m, s in specs.items() if m != gone}))
    print(f"{nodes_n:>6} nodes {replicas:>6} replicas ({len(specs):>5} models): "
          f"cold {cold * 1000:8.1f} ms  warm {warm * 1000:7.1f} ms  "
          f"idempotent {'yes' if not again.placements and not again.deletions else 'NO'}")
    print(f"{'':>14} quality: gpu memory {gmem:5.1%}  gpus {gpus:5.1%}  cpu {cpu:5.1%}  "
          f"placed {placed}  unplaced {unplaced}")
    print(f"{'':>14} churn: add model {moved(state, add_model)}  add node {moved(state, add_node)}  "
          f"remove model {moved(state, rm_model)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the two smaller sizes, one repeat")
    args = ap.parse_args()
    sizes = [(100, 1_000, 3), (1_000, 10_000, 3), (5_000, 50_000, 1), (1_000, 15_000, 1)]
    if args.quick:
        sizes = [(n, r, 1) for n, r, _ in sizes[:2]]
    t0 = time.perf_counter()
    for nodes_n, replicas, repeat in sizes:
        run(nodes_n, replicas, repeat)
    print(f"target: 10,000 replicas on 1,000 nodes, cold plan < 1 s; total bench time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
