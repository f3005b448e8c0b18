"""Inference through the gateway with unmodified tritonclient, on real Triton."""
from __future__ import annotations

import json
import queue
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.e2e


def _triton_address(mesh, node: str = "node-a") -> str:  # type: ignore[no-untyped-def]
    r = mesh.meshctl("get", "nodes", "--json")
    assert r.returncode == 0, r.stderr
    return next(n["address"] for n in json.loads(r.stdout) if n["node_id"] == node)


@pytest.mark.parametrize("batch", [1, 8])
def test_grpc_fraud_matches_numpy(embedded_mesh, fraud_reference, batch: int) -> None:
    client = grpcclient.InferenceServerClient(embedded_mesh.grpc_url)
    x = np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)
    inp = grpcclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer("fraud", [inp], outputs=[grpcclient.InferRequestedOutput("score")])
    np.testing.assert_allclose(res.as_numpy("score"), fraud_reference(x), rtol=1e-5, atol=1e-6)
    assert res.get_response().model_name == "fraud"


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("binary", [True, False])
def test_http_fraud_matches_numpy(embedded_mesh, fraud_reference, batch: int, binary: bool) -> None:
    client = httpclient.InferenceServerClient(embedded_mesh.http_url)
    x = np.random.default_rng(100 + batch).standard_normal((batch, 16)).astype(np.float32)
    inp = httpclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    res = client.infer("fraud", [inp], outputs=[httpclient.InferRequestedOutput("score", binary_data=binary)])
    np.testing.assert_allclose(res.as_numpy("score"), fraud_reference(x), rtol=1e-5, atol=1e-6)


def test_grpc_metadata_matches_direct_triton(embedded_mesh) -> None:
    gw = grpcclient.InferenceServerClient(embedded_mesh.grpc_url)
    direct = grpcclient.InferenceServerClient(_triton_address(embedded_mesh))
    assert gw.is_server_live() and gw.is_server_ready()
    for model in ("fraud", "text-stats", "half-double"):
        assert gw.get_model_metadata(model) == direct.get_model_metadata(model)
        assert gw.get_model_config(model) == direct.get_model_config(model)
        assert gw.is_model_ready(model) is True
        assert gw.is_model_ready(model) == direct.is_model_ready(model)
    assert gw.is_model_ready("no-such-model") is False
    index = {m.name: m.state for m in gw.get_model_repository_index().models}
    assert index == {"fraud": "READY", "text-stats": "READY", "half-double": "READY"}


def test_http_metadata_matches_direct_triton(embedded_mesh) -> None:
    gw = httpclient.InferenceServerClient(embedded_mesh.http_url)
    direct_grpc = _triton_address(embedded_mesh)
    r = embedded_mesh.meshctl("get", "nodes", "--json")
    assert r.returncode == 0
    direct = grpcclient.InferenceServerClient(direct_grpc)
    assert gw.is_server_live() and gw.is_server_ready()
    md = gw.get_model_metadata("fraud")
    want = direct.get_model_metadata("fraud", as_json=True)
    assert md["name"] == want["name"] == "fraud"
    assert md["versions"] == want["versions"]
    assert md["platform"] == want["platform"]
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in md["inputs"]] == \
        [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in want["inputs"]]
    assert gw.get_model_config("fraud")["max_batch_size"] == 64
    assert gw.is_model_ready("fraud") is True
    assert gw.is_model_ready("no-such-model") is False


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bytes_model_end_to_end(embedded_mesh, protocol: str) -> None:
    tc = grpcclient if protocol == "grpc" else httpclient
    client = tc.InferenceServerClient(embedded_mesh.grpc_url if protocol == "grpc" else embedded_mesh.http_url)
    text = np.array([[b"hello", b"", "h\u00e9llo".encode(), b"x" * 1000]], dtype=np.object_)
    inp = tc.InferInput("text", list(text.shape), "BYTES")
    inp.set_data_from_numpy(text)
    res = client.infer("text-stats", [inp])
    np.testing.assert_array_equal(res.as_numpy("length"), np.array([[5, 0, 6, 1000]], dtype=np.int32))
    assert [bytes(b) for b in res.as_numpy("upper").ravel()] == [b"HELLO", b"", "H\u00e9LLO".encode(), b"X" * 1000]


def test_bytes_model_json_tensors(embedded_mesh) -> None:
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": ["ab", "xyz"]}]})
    req = urllib.request.Request(f"http://{embedded_mesh.http_url}/v2/models/text-stats/infer", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        doc = json.loads(resp.read())
    outs = {o["name"]: o for o in doc["outputs"]}
    assert outs["length"]["data"] == [2, 3] and outs["length"]["shape"] == [1, 2]
    assert outs["upper"]["data"] == ["AB", "XYZ"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_fp16_model_end_to_end(embedded_mesh, protocol: str) -> None:
    tc = grpcclient if protocol == "grpc" else httpclient
    client = tc.InferenceServerClient(embedded_mesh.grpc_url if protocol == "grpc" else embedded_mesh.http_url)
    x = np.array([[0.5, -1.25, 1000.0, 3.0], [1, 2, 3, 4]], dtype=np.float16)
    inp = tc.InferInput("x", list(x.shape), "FP16")
    inp.set_data_from_numpy(x)
    res = client.infer("half-double", [inp])
    out = res.as_numpy("y")
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, x * 2)


def test_grpc_stream_infer(embedded_mesh, fraud_reference) -> None:
    client = grpcclient.InferenceServerClient(embedded_mesh.grpc_url)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    xs = [np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32) for i in range(5)]
    try:
        for i, x in enumerate(xs):
            inp = grpcclient.InferInput("features", [1, 16], "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer("fraud", [inp], request_id=str(i))
        client.async_stream_infer("no-such-model", [inp], request_id="bad")
        got = [results.get(timeout=30) for _ in range(6)]
    finally:
        client.stop_stream()
    ok = {r.get_response().id: r.as_numpy("score") for r, e in got if e is None}
    errors = [str(e) for r, e in got if e is not None]
    assert sorted(ok) == [str(i) for i in range(5)]
    for i, x in enumerate(xs):
        np.testing.assert_allclose(ok[str(i)], fraud_reference(x), rtol=1e-5)
    assert len(errors) == 1 and "no-such-model" in errors[0]


def test_metrics_count_requests_and_errors(embedded_mesh) -> None:
    client = grpcclient.InferenceServerClient(embedded_mesh.grpc_url)
    x = np.zeros((1, 16), dtype=np.float32)
    inp = grpcclient.InferInput("features", [1, 16], "FP32")
    inp.set_data_from_numpy(x)
    client.infer("fraud", [inp])
    with pytest.raises(InferenceServerException):
        client.infer("fraud", [grpcclient.InferInput("nope", [1, 16], "FP32").set_data_from_numpy(x)])
    with urllib.request.urlopen(f"http://127.0.0.1:{embedded_mesh.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    def value(prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))
    assert value('mesh_gateway_requests_total{model="fraud",protocol="grpc"}') >= 2
    assert value('mesh_gateway_errors_total{code="INVALID_ARGUMENT",model="fraud"') >= 1
    assert value('mesh_gateway_request_duration_seconds_count{model="fraud",protocol="grpc"}') >= 2
    assert 'mesh_gateway_in_flight_requests{model="fraud"}' in text
