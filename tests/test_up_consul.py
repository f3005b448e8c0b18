"""`meshctl up --store consul://...`: the all-in-one process on a real Consul."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from support.consul import ConsulAgent
from support.mesh import ROOT, EmbeddedMesh

pytestmark = pytest.mark.e2e


def test_meshctl_up_on_consul(tmp_path: Path, fraud_reference) -> None:
    (tmp_path / "consul").mkdir()
    with ConsulAgent(workdir=tmp_path / "consul") as consul:
        mesh = EmbeddedMesh(tmp_path / "mesh", store=consul.url)
        mesh.start()
        try:
            mesh.apply(ROOT / "examples" / "fraud" / "isvc.yaml")
            client = httpclient.InferenceServerClient(mesh.http_url)
            x = np.random.default_rng(9).standard_normal((4, 16)).astype(np.float32)
            inp = httpclient.InferInput("features", [4, 16], "FP32")
            inp.set_data_from_numpy(x)
            np.testing.assert_allclose(client.infer("fraud", [inp]).as_numpy("score"), fraud_reference(x), rtol=1e-5)
            # The state is in Consul itself, not in the process.
            with urllib.request.urlopen(f"http://{consul.http_addr}/v1/kv/mesh/placements/fraud", timeout=5) as r:
                assert json.loads(r.read())[0]["Key"] == "mesh/placements/fraud"
            with urllib.request.urlopen(f"http://{consul.http_addr}/v1/health/service/mesh-node?passing=1",
                                        timeout=5) as r:
                assert [e["Service"]["ID"] for e in json.loads(r.read())] == ["node-a"]
        finally:
            assert mesh.stop() == 0, mesh.log_tail()
