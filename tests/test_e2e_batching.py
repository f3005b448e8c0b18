"""Gateway-side dynamic batching on real Triton, through unmodified tritonclient (gRPC and HTTP).

Its own `meshctl up` (the session mesh's model list is asserted elsewhere) with the fraud
example and the BYTES text_stats model deployed under other names with
``batching: {maxBatchSize: 16, maxQueueDelayMicroseconds: 2000}``.

Semantics of a bad member: requests are grouped by merge key (input names, datatypes, shape
tails, requested outputs, parameters), so a request naming an input the model lacks never
shares a call with good ones: it fails alone with Triton's INVALID_ARGUMENT while the good
requests queued beside it succeed.
"""
from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.mesh import MODELS, ROOT, EmbeddedMesh, write_spec

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

BATCHING = "batching: {maxBatchSize: 16, maxQueueDelayMicroseconds: 2000}"
FRAUD, TEXT = "fraud-batched", "text-batched"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedMesh]:
    work = tmp_path_factory.mktemp("mesh-batching")
    m = EmbeddedMesh(work)
    m.start()
    try:
        m.apply(write_spec(work / "fraud.yaml", FRAUD, ROOT / "examples" / "fraud" / "model", extra=BATCHING))
        m.apply(write_spec(work / "text.yaml", TEXT, MODELS / "text_stats", extra=BATCHING))
        yield m
    finally:
        m.stop()


def metric(mesh: EmbeddedMesh, prefix: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{mesh.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def burst(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) in n threads released together; results (or exceptions) in order."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait(timeout=30)
        try:
            return fn(i)
        except Exception as exc:
            return exc
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def fraud_call(mesh: EmbeddedMesh, x: np.ndarray, protocol: str, rid: str, outputs: tuple[str, ...] = ("score",),
               input_name: str = "features") -> Any:
    tc = grpcclient if protocol == "grpc" else httpclient
    client = tc.InferenceServerClient(mesh.grpc_url if protocol == "grpc" else mesh.http_url)
    inp = tc.InferInput(input_name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer(FRAUD, [inp], outputs=[tc.InferRequestedOutput(o) for o in outputs] or None, request_id=rid)
    return res


def test_32_concurrent_batch1_requests_each_get_their_own_answer(mesh, fraud_reference) -> None:
    before = metric(mesh, f'mesh_gateway_batches_total{{model="{FRAUD}"}}')
    xs = [np.random.default_rng(1000 + i).standard_normal((1, 16)).astype(np.float32) for i in range(32)]
    for _attempt in range(3):  # batches form from timing; a burst of 32 forms some on the first try
        results = burst(32, lambda i: fraud_call(mesh, xs[i], "http" if i % 4 == 3 else "grpc", f"req-{i}"))
        for i, (x, res) in enumerate(zip(xs, results)):
            assert not isinstance(res, Exception), f"request {i}: {res}"
            np.testing.assert_allclose(res.as_numpy("score"), fraud_reference(x), rtol=1e-5, atol=1e-6)
            rid = res.get_response().id if i % 4 != 3 else res.get_response()["id"]
            assert rid == f"req-{i}"
        if metric(mesh, f'mesh_gateway_batches_total{{model="{FRAUD}"}}') > before:
            break
    batches = metric(mesh, f'mesh_gateway_batches_total{{model="{FRAUD}"}}') - before
    assert batches >= 1, "no batched call was sent"
    rows = metric(mesh, f'mesh_gateway_batch_size_sum{{model="{FRAUD}"}}')
    calls = metric(mesh, f'mesh_gateway_batch_size_count{{model="{FRAUD}"}}')
    assert rows / calls > 1 and rows <= 16 * calls
    assert metric(mesh, f'mesh_gateway_requests_total{{model="{FRAUD}",protocol="http"}}') >= 8


def test_bytes_model_batched_per_request_answers(mesh) -> None:
    words = [[f"w{i}-{j}".encode() * (i % 3 + 1) for j in range(3)] for i in range(24)]
    before = metric(mesh, f'mesh_gateway_batches_total{{model="{TEXT}"}}')

    def call(i: int) -> Any:
        tc = grpcclient if i % 3 else httpclient
        client = tc.InferenceServerClient(mesh.grpc_url if i % 3 else mesh.http_url)
        text = np.array([words[i]], dtype=np.object_)
        inp = tc.InferInput("text", [1, 3], "BYTES")
        inp.set_data_from_numpy(text)
        return client.infer(TEXT, [inp])

    for _attempt in range(3):
        results = burst(24, call)
        for i, res in enumerate(results):
            assert not isinstance(res, Exception), f"request {i}: {res}"
            assert res.as_numpy("length").tolist() == [[len(w) for w in words[i]]]
            assert [bytes(b) for b in res.as_numpy("upper").ravel()] == [w.upper() for w in words[i]]
        if metric(mesh, f'mesh_gateway_batches_total{{model="{TEXT}"}}') > before:
            break
    assert metric(mesh, f'mesh_gateway_batches_total{{model="{TEXT}"}}') > before


def test_different_shape_tail_and_outputs_are_sent_separately(mesh, fraud_reference) -> None:
    def call(i: int) -> Any:
        if i % 2:  # BYTES with 3 vs 5 per row: different shape tails, different groups
            n = 3 if i % 4 == 1 else 5
            client = grpcclient.InferenceServerClient(mesh.grpc_url)
            text = np.array([[b"ab"] * n], dtype=np.object_)
            inp = grpcclient.InferInput("text", [1, n], "BYTES")
            inp.set_data_from_numpy(text)
            res = client.infer(TEXT, [inp], outputs=[grpcclient.InferRequestedOutput("length")] if i % 8 == 1 else None)
            assert res.as_numpy("length").tolist() == [[2] * n]
            return res
        x = np.full((1, 16), i / 10, np.float32)
        res = fraud_call(mesh, x, "grpc", str(i), outputs=() if i % 4 == 0 else ("score",))
        np.testing.assert_allclose(res.as_numpy("score"), fraud_reference(x), rtol=1e-5, atol=1e-6)
        return res

    results = burst(16, call)
    assert [r for r in results if isinstance(r, Exception)] == []
    only_length = [r for i, r in enumerate(results) if i % 8 == 1]
    assert all(r.as_numpy("upper") is None for r in only_length)


def test_bad_member_fails_alone_with_tritons_error(mesh, fraud_reference) -> None:
    xs = [np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32) for i in range(12)]
    results = burst(12, lambda i: fraud_call(mesh, xs[i], "grpc", str(i), input_name="nope" if i == 5 else "features"))
    for i, res in enumerate(results):
        if i == 5:
            assert isinstance(res, InferenceServerException), res
            assert res.status() == "StatusCode.INVALID_ARGUMENT" and "nope" in res.message()
        else:
            assert not isinstance(res, Exception), f"request {i}: {res}"
            np.testing.assert_allclose(res.as_numpy("score"), fraud_reference(xs[i]), rtol=1e-5, atol=1e-6)


def test_oversized_batch_is_sent_alone(mesh, fraud_reference) -> None:
    before = metric(mesh, f'mesh_gateway_unbatched_total{{model="{FRAUD}",reason="batch_size"}}')
    x = np.random.default_rng(7).standard_normal((20, 16)).astype(np.float32)  # > maxBatchSize 16, <= Triton's 64
    res = fraud_call(mesh, x, "grpc", "big")
    np.testing.assert_allclose(res.as_numpy("score"), fraud_reference(x), rtol=1e-5, atol=1e-6)
    assert metric(mesh, f'mesh_gateway_unbatched_total{{model="{FRAUD}",reason="batch_size"}}') == before + 1


def test_stream_through_batching_model(mesh, fraud_reference) -> None:
    import queue
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    xs = [np.random.default_rng(50 + i).standard_normal((1, 16)).astype(np.float32) for i in range(4)]
    try:
        for i, x in enumerate(xs):
            inp = grpcclient.InferInput("features", [1, 16], "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer(FRAUD, [inp], request_id=str(i))
        got = [results.get(timeout=30) for _ in xs]
    finally:
        client.stop_stream()
    by_id = {r.get_response().id: r for r, e in got if e is None}
    assert sorted(by_id) == ["0", "1", "2", "3"]
    for i, x in enumerate(xs):
        np.testing.assert_allclose(by_id[str(i)].as_numpy("score"), fraud_reference(x), rtol=1e-5)
