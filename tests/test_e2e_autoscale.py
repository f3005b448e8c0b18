"""Autoscaling end to end: real Consul, a scheduler, a gateway and three node agents with
their tritonservers, as separate processes (tests/support/cluster.py), with fast settings.

(a) a load step drives the fraud model from 1 to 3 replicas and back to 1, no request failing;
(b) a model with minReplicas 0 goes to zero replicas when idle, and a request then is held
    at the gateway until a replica is ready, and served (the cold start is printed)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from support.cluster import Cluster, Load
from support.mesh import ROOT, write_spec

pytestmark = pytest.mark.e2e
FRAUD = ROOT / "examples" / "fraud" / "model"
FAST = """
scaleTarget: 1
stableWindowSeconds: 6
panicWindowSeconds: 2
scaleDownDelaySeconds: 5
idleTimeoutSeconds: 5
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("autoscale"))
    try:
        c.start(n_schedulers=1)
        yield c
    finally:
        c.stop()


def _wait(cond: Callable[[], bool], timeout: float, what: str, cluster: Cluster) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{cluster.meshctl('get', 'models').stdout}"
                         f"\n{cluster.tails()}")


def _placed(cluster: Cluster, model: str) -> int:
    return len(cluster.models().get(model, {}).get("replicas", []))


def test_load_step_scales_up_and_back_down(cluster: Cluster) -> None:
    spec = write_spec(cluster.work / "fraud.yaml", "fraud", FRAUD, 1, 3, extra=FAST)
    r = cluster.meshctl("apply", "-f", str(spec), "--wait", "--timeout", "120")
    assert r.returncode == 0, r.stdout + r.stderr + cluster.tails()
    assert len(cluster.ready_nodes("fraud")) == 1
    t0 = time.monotonic()
    with Load(cluster.grpc_url, "fraud", threads=8, max_seconds=60) as load:
        t_up = _wait(lambda: len(cluster.ready_nodes("fraud")) == 3, 40, "3 ready replicas under load", cluster)
        desc = cluster.meshctl("describe", "model", "fraud").stdout
        time.sleep(max(0.0, 20 - (time.monotonic() - t0)))   # hold the step ~20s in all
    ok, failed = load.ok, len(load.failures)
    stopped = time.monotonic()
    t_down = _wait(lambda: _placed(cluster, "fraud") == 1, 60, "back to 1 replica after the load", cluster)
    t_idle = time.monotonic() - stopped
    print(f"\nload step (8 client threads, target 1 in flight per replica): 1 -> 3 ready replicas in {t_up:.1f}s; "
          f"back to 1 replica {t_idle:.1f}s after the load stopped; requests ok {ok}, failed {failed}")
    print(desc)
    assert ok > 0
    assert failed == 0, load.failures[:5]
    assert t_down >= 0
    assert len(cluster.ready_nodes("fraud")) == 1
    m = cluster.models()["fraud"]
    assert m["autoscale_desired"] == 1 and m["autoscale_reason"]
    text = cluster.meshctl("get", "models").stdout
    assert "DESIRED" in text and "REASON" in text


def test_scale_from_zero_serves_the_held_request(cluster: Cluster, fraud_reference) -> None:
    spec = write_spec(cluster.work / "fz.yaml", "fraud-zero", FRAUD, 0, 2, extra=FAST)
    r = cluster.meshctl("apply", "-f", str(spec), "--wait", "--timeout", "120")
    assert r.returncode == 0, r.stdout + r.stderr + cluster.tails()
    t_zero = _wait(lambda: _placed(cluster, "fraud-zero") == 0 and "fraud-zero" not in str(cluster.nodes()), 60,
                   "fraud-zero at zero replicas", cluster)
    reason = cluster.models()["fraud-zero"].get("autoscale_reason", "")
    assert "scale to zero" in reason, reason
    client = grpcclient.InferenceServerClient(cluster.grpc_url)
    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    inp = grpcclient.InferInput("features", [2, 16], "FP32")
    inp.set_data_from_numpy(x)
    t0 = time.monotonic()
    out = client.infer("fraud-zero", [inp], client_timeout=90).as_numpy("score")
    cold = time.monotonic() - t0
    print(f"\nscale from zero: at zero {t_zero:.1f}s after deploy (idle timeout 5s); held request served after "
          f"{cold:.2f}s (cold start)")
    np.testing.assert_allclose(out, fraud_reference(x), rtol=1e-5)
    assert len(cluster.ready_nodes("fraud-zero")) == 1
    with pytest.raises(grpcclient.InferenceServerException) as exc:   # unknown models still fail at once
        client.infer("no-such-model", [inp], client_timeout=10)
    assert "NOT_FOUND" in str(exc.value.status())
