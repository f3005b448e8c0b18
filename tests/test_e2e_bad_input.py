"""Bad input through gRPC and HTTP: a precise error each time, and the next
good request still succeeds (the gateway keeps serving)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.e2e

GOOD = np.ones((1, 16), dtype=np.float32)


def _good_grpc(url: str) -> None:
    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("features", [1, 16], "FP32")
    inp.set_data_from_numpy(GOOD)
    assert client.infer("fraud", [inp]).as_numpy("score").shape == (1, 1)


def _raw_request(**overrides) -> service_pb2.ModelInferRequest:  # type: ignore[no-untyped-def]
    req = service_pb2.ModelInferRequest(model_name=overrides.get("model", "fraud"))
    t = req.inputs.add(name=overrides.get("name", "features"), datatype=overrides.get("datatype", "FP32"),
                       shape=overrides.get("shape", [1, 16]))
    del t
    req.raw_input_contents.append(overrides.get("raw", GOOD.tobytes()))
    return req


GRPC_CASES = {
    "unknown model": (dict(model="nope"), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
    "wrong input name": (dict(name="feat"), grpc.StatusCode.INVALID_ARGUMENT, "feat"),
    "wrong dtype": (dict(datatype="INT32"), grpc.StatusCode.INVALID_ARGUMENT, "INT32"),
    "wrong shape": (dict(shape=[1, 15], raw=np.ones((1, 15), np.float32).tobytes()),
                    grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    "byte size mismatch": (dict(raw=b"\0" * 60), grpc.StatusCode.INVALID_ARGUMENT, "byte"),
}


@pytest.mark.parametrize("case", sorted(GRPC_CASES))
def test_grpc_bad_input_then_good(embedded_mesh, case: str) -> None:
    overrides, code, needle = GRPC_CASES[case]
    with grpc.insecure_channel(embedded_mesh.grpc_url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(_raw_request(**overrides), timeout=30)
    assert info.value.code() == code, info.value.details()
    assert needle.lower() in info.value.details().lower(), info.value.details()
    _good_grpc(embedded_mesh.grpc_url)


def test_grpc_garbage_body_then_good(embedded_mesh) -> None:
    with grpc.insecure_channel(embedded_mesh.grpc_url) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for garbage in (b"\xff\xff\xff\xff", b"\x0a\x50abc", b"\x0b"):
            with pytest.raises(grpc.RpcError) as info:
                call(garbage, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed ModelInferRequest" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no model_name" in info.value.details()
    _good_grpc(embedded_mesh.grpc_url)


def test_grpc_oversized_message_then_good(embedded_mesh) -> None:
    big = np.zeros((1, 17 * 1024 * 1024), dtype=np.float32)  # 68 MiB > 64 MiB limit
    opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(embedded_mesh.grpc_url, options=opts) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(_raw_request(shape=list(big.shape), raw=big.tobytes()), timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    assert "larger than max" in info.value.details()
    _good_grpc(embedded_mesh.grpc_url)


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read().split(b"\0")[0] or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _json_infer(name: str = "features", datatype: str = "FP32", shape=(1, 16), data=None) -> bytes:  # type: ignore[no-untyped-def]
    return json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": list(shape),
                                   "data": data if data is not None else [1.0] * 16}]}).encode()


HTTP_CASES = {
    "unknown model": ("nope", _json_infer(), None, 404, "unknown model 'nope'"),
    "wrong input name": ("fraud", _json_infer(name="feat"), None, 400, "feat"),
    "wrong dtype": ("fraud", _json_infer(datatype="INT32", data=[1] * 16), None, 400, "INT32"),
    "wrong shape": ("fraud", _json_infer(shape=(1, 15), data=[1.0] * 15), None, 400, "shape"),
    "element count mismatch": ("fraud", _json_infer(data=[1.0] * 15), None, 400, "features"),
    "garbage body": ("fraud", b"{not json", None, 400, "not valid JSON"),
    "binary size past end": ("fraud", None, "binary", 400, "binary_data_size"),
    "bad dtype name": ("fraud", _json_infer(datatype="FP99"), None, 400, "FP99"),
}


@pytest.mark.parametrize("case", sorted(HTTP_CASES))
def test_http_bad_input_then_good(embedded_mesh, case: str) -> None:
    model, body, kind, status, needle = HTTP_CASES[case]
    headers = None
    if kind == "binary":
        head = json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 16],
                                       "parameters": {"binary_data_size": 64}}]}).encode()
        body = head + b"\0" * 10
        headers = {"Inference-Header-Content-Length": str(len(head))}
    code, doc = _post(f"http://{embedded_mesh.http_url}/v2/models/{model}/infer", body, headers)
    assert code == status, doc
    assert needle.lower() in doc.get("error", "").lower(), doc
    client = httpclient.InferenceServerClient(embedded_mesh.http_url)
    inp = httpclient.InferInput("features", [1, 16], "FP32")
    inp.set_data_from_numpy(GOOD)
    assert client.infer("fraud", [inp]).as_numpy("score").shape == (1, 1)


def test_http_oversized_body_then_good(embedded_mesh) -> None:
    body = b"{" + b" " * (65 * 1024 * 1024) + b"}"
    try:
        code, doc = _post(f"http://{embedded_mesh.http_url}/v2/models/fraud/infer", body)
    except (ConnectionError, urllib.error.URLError):
        code, doc = 413, {"error": "connection closed on oversized body"}
    assert code == 413, doc
    client = httpclient.InferenceServerClient(embedded_mesh.http_url)
    inp = httpclient.InferInput("features", [1, 16], "FP32")
    inp.set_data_from_numpy(GOOD)
    assert client.infer("fraud", [inp]).as_numpy("score").shape == (1, 1)


def test_tritonclient_sees_precise_errors(embedded_mesh) -> None:
    client = grpcclient.InferenceServerClient(embedded_mesh.grpc_url)
    inp = grpcclient.InferInput("features", [1, 16], "FP32")
    inp.set_data_from_numpy(GOOD)
    with pytest.raises(InferenceServerException) as info:
        client.infer("missing-model", [inp])
    assert "StatusCode.NOT_FOUND" in str(info.value.status())
    assert "missing-model" in info.value.message()
