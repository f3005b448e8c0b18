"""Rolling update on the embedded mesh (one node: the replica reloads in place)
under constant load: no failed request, and the new version answers after."""
from __future__ import annotations

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from support.cluster import Load
from support.mesh import fraud_forward, fraud_version, write_spec

pytestmark = pytest.mark.e2e
V1, V2 = 101, 202


def _answer(url: str, model: str, x: np.ndarray) -> np.ndarray:
    inp = grpcclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return grpcclient.InferenceServerClient(url).infer(model, [inp]).as_numpy("score")


def test_rolling_update_in_place_under_load(embedded_mesh, tmp_path) -> None:
    m = embedded_mesh
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    m.apply(write_spec(tmp_path / "v1.yaml", "roll", fraud_version(tmp_path / "m1", V1)))
    np.testing.assert_allclose(_answer(m.grpc_url, "roll", x), fraud_forward(V1)(x), rtol=1e-5)
    try:
        with Load(m.grpc_url, "roll", threads=2) as load:
            time.sleep(1)
            r = m.meshctl("apply", "-f", str(write_spec(tmp_path / "v2.yaml", "roll", fraud_version(tmp_path / "m2", V2))))
            assert r.returncode == 0, r.stderr
            r = m.meshctl("rollout", "status", "roll", "--wait", "--timeout", "120")
            assert r.returncode == 0, r.stdout + r.stderr + m.log_tail()
            time.sleep(1)
        print(f"\nrolling update under load: ok {load.ok}, failed {len(load.failures)}\n{r.stdout.strip()}")
        assert "complete" in r.stdout
        assert load.ok > 0 and load.failures == [], load.failures[:5]
        np.testing.assert_allclose(_answer(m.grpc_url, "roll", x), fraud_forward(V2)(x), rtol=1e-5)
    finally:
        m.meshctl("delete", "roll")
