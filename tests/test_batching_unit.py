"""gateway.batcher without a network: merge keys, unmergeable requests, merge/split, and the
asyncio queueing (flush on size, on delay, on a short deadline; failures; drain) over a fake
upstream.

The messages are tritonclient's ``inference`` protobufs (the same schema as ``meshproto``):
the suite runs in one process with the tritonclient end-to-end tests, and the two generated
modules cannot both be imported there (they register the same protobuf names). So nothing
here imports meshproto, gateway.core or gateway.server."""
from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from fastpath.codec import decode_tensor, encode_bytes
from gateway.batcher import Batcher, Unmergeable, build_batched_request, plan_member, split_response
from gateway.metrics import GatewayMetrics
from mesh.errors import InternalError, MeshError
from mesh.types import BatchingSpec

pb = pytest.importorskip("tritonclient.grpc.service_pb2")


class UpstreamStatus(MeshError):
    """Stands in for gateway.core.UpstreamStatus (an upstream's gRPC status, passed on)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.grpc_code = code


def batcher(up: RecordingSend, metrics: GatewayMetrics | None = None) -> Batcher:
    return Batcher(up.send, metrics or GatewayMetrics(), pb.ModelInferRequest, pb.ModelInferResponse)


def fp32_req(x: np.ndarray, rid: str = "", outputs: tuple[str, ...] = ("score",), model: str = "m") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, id=rid)
    req.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    for o in outputs:
        req.outputs.add(name=o)
    return req


def bytes_req(rows: list[list[bytes]], rid: str = "") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="text", id=rid)
    req.inputs.add(name="text", datatype="BYTES", shape=[len(rows), len(rows[0])])
    req.raw_input_contents.append(encode_bytes([b for r in rows for b in r]))
    return req


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


# -- merge keys -----------------------------------------------------------------
def test_same_shape_tail_same_key_and_batch_size() -> None:
    k1, b1 = plan_member(fp32_req(rows(1)), 16)  # type: ignore[misc]
    k3, b3 = plan_member(fp32_req(rows(3), rid="other id"), 16)  # type: ignore[misc]
    assert (b1, b3) == (1, 3) and k1 == k3


@pytest.mark.parametrize("change", ["tail", "outputs", "output_params", "params", "version", "dtype", "name"])
def test_key_separates_what_cannot_share_a_call(change: str) -> None:
    base = fp32_req(rows(1))
    other = fp32_req(rows(1))
    if change == "tail":
        other = fp32_req(np.zeros((1, 5), np.float32))
    elif change == "outputs":
        other = fp32_req(rows(1), outputs=())
    elif change == "output_params":
        other.outputs[0].parameters["classification"].int64_param = 2
    elif change == "params":
        other.parameters["priority"].int64_param = 1
    elif change == "version":
        other.model_version = "2"
    elif change == "dtype":
        other.inputs[0].datatype = "INT32"
    elif change == "name":
        other.inputs[0].name = "nope"
    a, b = plan_member(base, 16), plan_member(other, 16)
    assert not isinstance(b, Unmergeable), b
    assert a[0] != b[0]  # type: ignore[index]


def _unmergeable(req: pb.ModelInferRequest, max_batch: int = 16) -> str:
    plan = plan_member(req, max_batch)
    assert isinstance(plan, Unmergeable), plan
    return plan.reason


def test_unmergeable_requests_say_why() -> None:
    contents = pb.ModelInferRequest(model_name="m")
    t = contents.inputs.add(name="features", datatype="FP32", shape=[1, 2])
    t.contents.fp32_contents.extend([1.0, 2.0])
    assert _unmergeable(contents) == "contents"
    assert _unmergeable(pb.ModelInferRequest(model_name="m")) == "no_inputs"
    seq = fp32_req(rows(1))
    seq.parameters["sequence_id"].int64_param = 7
    assert _unmergeable(seq) == "sequence"
    assert _unmergeable(fp32_req(rows(17))) == "batch_size"
    assert _unmergeable(fp32_req(np.zeros((0, 4), np.float32))) == "batch_size"
    short = fp32_req(rows(2))
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    assert _unmergeable(short) == "malformed"
    two = fp32_req(rows(2))
    two.inputs.add(name="mask", datatype="BOOL", shape=[3])
    two.raw_input_contents.append(b"\x01\x00\x01")
    assert _unmergeable(two) == "batch_dims_differ"
    scalar = fp32_req(rows(1))
    del scalar.inputs[0].shape[:]
    assert _unmergeable(scalar) == "no_batch_dim"
    shm = fp32_req(rows(1))
    shm.outputs[0].parameters["shared_memory_region"].string_param = "r"
    assert _unmergeable(shm) == "shared_memory"
    inparam = fp32_req(rows(1))
    inparam.inputs[0].parameters["shared_memory_region"].string_param = "r"
    assert _unmergeable(inparam) == "input_parameters"
    dup = fp32_req(rows(1))
    dup.inputs.add(name="features", datatype="FP32", shape=[1, 4])
    dup.raw_input_contents.append(rows(1).tobytes())
    assert _unmergeable(dup) == "duplicate_input"
    unknown = fp32_req(rows(1))
    unknown.inputs[0].datatype = "FP128"
    assert _unmergeable(unknown) == "malformed"


def test_bytes_element_count_is_checked_so_members_cannot_shift() -> None:
    ok = bytes_req([[b"ab", b"c"]])
    assert not isinstance(plan_member(ok, 16), Unmergeable)
    # shape says 1x2 but three elements are sent: would steal a row from the next member
    bad = bytes_req([[b"ab", b"c"]])
    bad.raw_input_contents[0] = encode_bytes([b"ab", b"c", b"d"])
    assert _unmergeable(bad) == "malformed"
    truncated = bytes_req([[b"ab", b"c"]])
    truncated.raw_input_contents[0] = truncated.raw_input_contents[0][:-1]
    assert _unmergeable(truncated) == "malformed"


# -- merge and split ----------------------------------------------------------------
def _double(req: pb.ModelInferRequest, model_version: str = "1") -> pb.ModelInferResponse:
    """A fake model: score = 2 * features (FP32), or upper/length for BYTES."""
    resp = pb.ModelInferResponse(model_name=req.model_name, model_version=model_version, id=req.id)
    t = req.inputs[0]
    if t.datatype == "BYTES":
        from fastpath.codec import decode_bytes
        vals = decode_bytes(req.raw_input_contents[0], int(np.prod(t.shape)))
        resp.outputs.add(name="upper", datatype="BYTES", shape=list(t.shape))
        resp.raw_output_contents.append(encode_bytes([v.upper() for v in vals]))
        resp.outputs.add(name="length", datatype="INT32", shape=list(t.shape))
        resp.raw_output_contents.append(np.array([len(v) for v in vals], np.int32).tobytes())
        return resp
    x = decode_tensor(req.raw_input_contents[0], "FP32", list(t.shape))
    resp.outputs.add(name="score", datatype="FP32", shape=list(t.shape))
    resp.raw_output_contents.append((x * 2).tobytes())
    return resp


def test_merge_then_split_gives_each_member_its_rows_and_id() -> None:
    xs = [rows(n, seed=n) for n in (1, 3, 2)]
    members = [fp32_req(x, rid=f"r{i}") for i, x in enumerate(xs)]
    sizes = [1, 3, 2]
    merged = build_batched_request(members, sizes)
    assert list(merged.inputs[0].shape) == [6, 4] and merged.id == ""
    assert [o.name for o in merged.outputs] == ["score"]
    np.testing.assert_array_equal(decode_tensor(merged.raw_input_contents[0], "FP32", [6, 4]), np.concatenate(xs))
    resp = _double(merged)
    resp.parameters["p"].string_param = "kept"
    outs = split_response(resp, members, sizes)
    for i, (x, r) in enumerate(zip(xs, outs)):
        assert r.id == f"r{i}" and r.model_name == "m" and r.model_version == "1"
        assert list(r.outputs[0].shape) == [len(x), 4] and r.outputs[0].datatype == "FP32"
        assert r.parameters["p"].string_param == "kept"
        np.testing.assert_array_equal(decode_tensor(r.raw_output_contents[0], "FP32", [len(x), 4]), x * 2)
        # exactly what the model would answer for this request alone
        alone = _double(members[i])
        alone.parameters["p"].string_param = "kept"
        assert r.SerializeToString() == alone.SerializeToString()


def test_bytes_merge_split_round_trip() -> None:
    members = [bytes_req([[b"a", b"bb"]], "x"), bytes_req([[b"", b"ccc"], [b"dd", "\u00e9".encode()]], "y")]
    sizes = [1, 2]
    outs = split_response(_double(build_batched_request(members, sizes)), members, sizes)
    for m, r in zip(members, outs):
        assert r.SerializeToString() == _double(m).SerializeToString()


def test_split_refuses_outputs_without_batch_dim() -> None:
    members = [fp32_req(rows(1)), fp32_req(rows(1))]
    resp = _double(build_batched_request(members, [1, 1]))
    resp.outputs[0].shape[0] = 3
    with pytest.raises(InternalError, match="first dimension is the batch"):
        split_response(resp, members, [1, 1])
    resp = _double(build_batched_request(members, [1, 1]))
    resp.raw_output_contents[0] = resp.raw_output_contents[0][:-1]
    with pytest.raises(InternalError, match="cannot split"):
        split_response(resp, members, [1, 1])


# -- the asyncio queueing shell, unit-tested over a recording send function (real Triton: test_e2e_batching.py)
class RecordingSend:
    def __init__(self, fail: grpc.StatusCode | None = None, delay: float = 0.0) -> None:
        self.calls: list[tuple[pb.ModelInferRequest, float | None]] = []
        self.fail = fail
        self.delay = delay

    async def send(self, model: str, body: bytes, timeout: float | None) -> bytes:
        req = pb.ModelInferRequest.FromString(body)
        self.calls.append((req, timeout))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise UpstreamStatus(self.fail, f"upstream says no to batch of {req.inputs[0].shape[0]}")
        return _double(req).SerializeToString()


def _answer(out: object) -> pb.ModelInferResponse:
    return pb.ModelInferResponse.FromString(out) if isinstance(out, bytes) else out  # type: ignore[return-value]


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_concurrent_requests_share_one_call_and_get_their_own_answers() -> None:
    async def main() -> None:
        up = RecordingSend()
        b = batcher(up)
        policy = BatchingSpec(max_batch_size=8, max_queue_delay_us=50_000)
        xs = [rows(1, seed=i) for i in range(8)]
        outs = await asyncio.gather(*(b.submit("m", policy, fp32_req(x, rid=str(i)), None, 30.0)
                                      for i, x in enumerate(xs)))
        assert len(up.calls) == 1 and list(up.calls[0][0].inputs[0].shape) == [8, 4]
        for i, (x, out) in enumerate(zip(xs, outs)):
            r = _answer(out)
            assert r.id == str(i)
            np.testing.assert_array_equal(decode_tensor(r.raw_output_contents[0], "FP32", [1, 4]), x * 2)
    _run(main())


def test_flush_on_size_then_on_delay() -> None:
    async def main() -> None:
        up = RecordingSend()
        m = GatewayMetrics()
        b = batcher(up, m)
        # A delay no test waits for: finishing at all proves the groups left by size.
        by_size = BatchingSpec(max_batch_size=4, max_queue_delay_us=600_000_000)
        outs = await asyncio.wait_for(asyncio.gather(
            *(b.submit("m", by_size, fp32_req(rows(n)), None, None) for n in (3, 2, 1, 1))), 5)
        # 3 then 2 does not fit in 4: the first group (3) leaves alone, 2+1+1 fills the second
        assert [list(c[0].inputs[0].shape) for c in up.calls] == [[3, 4], [4, 4]]
        assert [list(_answer(o).outputs[0].shape) for o in outs] == [[3, 4], [2, 4], [1, 4], [1, 4]]
        up.calls.clear()
        # Two of four never fill a batch: only the delay can send them, together.
        by_delay = BatchingSpec(max_batch_size=4, max_queue_delay_us=20_000)
        await asyncio.gather(*(b.submit("m", by_delay, fp32_req(rows(1)), None, None) for _ in range(2)))
        assert len(up.calls) == 1 and list(up.calls[0][0].inputs[0].shape) == [2, 4]
        assert m.batches.labels("m")._value.get() == 2  # the lone 3 went as is: not a batch
        assert m.batch_size.labels("m")._sum.get() == 4 + 2
    _run(main())


def test_failure_fails_exactly_its_members_with_upstream_status() -> None:
    async def main() -> None:
        up = RecordingSend(fail=grpc.StatusCode.INVALID_ARGUMENT)
        b = batcher(up)
        policy = BatchingSpec(max_batch_size=4, max_queue_delay_us=5_000)
        res = await asyncio.gather(*(b.submit("m", policy, fp32_req(rows(1)), None, None) for _ in range(5)),
                                   return_exceptions=True)
        assert all(isinstance(r, UpstreamStatus) and r.grpc_code == grpc.StatusCode.INVALID_ARGUMENT for r in res)
        assert "batch of 4" in str(res[0]) and "batch of 1" in str(res[4])
        up.fail = None
        ok = await b.submit("m", policy, fp32_req(rows(1)), None, None)
        assert _answer(ok).outputs[0].name == "score"
    _run(main())


def test_unmergeable_goes_alone_as_received() -> None:
    async def main() -> None:
        up = RecordingSend()
        m = GatewayMetrics()
        b = batcher(up, m)
        policy = BatchingSpec(max_batch_size=4, max_queue_delay_us=600_000_000)  # never waited for
        req = fp32_req(rows(6))
        out = await asyncio.wait_for(b.submit("m", policy, None, req.SerializeToString(), None), 5)
        assert isinstance(out, bytes)
        (sent, _), = up.calls                       # alone, exactly as received
        assert sent == req and list(_answer(out).outputs[0].shape) == [6, 4]
        assert m.unbatched.labels("m", "batch_size")._value.get() == 1
    _run(main())


def test_short_deadline_flushes_early_and_bounds_the_upstream_call() -> None:
    async def main() -> None:
        up = RecordingSend()
        b = batcher(up)
        policy = BatchingSpec(max_batch_size=16, max_queue_delay_us=600_000_000)  # never waited for
        first = asyncio.ensure_future(b.submit("m", policy, fp32_req(rows(1)), None, None))
        await asyncio.sleep(0)
        # A member whose deadline is shorter than the queue delay sends the group now.
        await asyncio.wait_for(b.submit("m", policy, fp32_req(rows(1)), None, 0.2), 5)
        await asyncio.wait_for(first, 5)
        (req, timeout), = up.calls
        assert list(req.inputs[0].shape) == [2, 4] and timeout is not None and timeout <= 0.2
    _run(main())


def test_cancelled_member_does_not_break_the_batch() -> None:
    async def main() -> None:
        up = RecordingSend(delay=0.02)
        b = batcher(up)
        policy = BatchingSpec(max_batch_size=16, max_queue_delay_us=10_000)
        gone = asyncio.ensure_future(b.submit("m", policy, fp32_req(rows(1), rid="gone"), None, None))
        stay = asyncio.ensure_future(b.submit("m", policy, fp32_req(rows(1), rid="stay"), None, None))
        await asyncio.sleep(0)
        gone.cancel()
        assert _answer(await stay).id == "stay"
    _run(main())


def test_drain_flushes_pending_then_sends_alone() -> None:
    async def main() -> None:
        up = RecordingSend()
        b = batcher(up)
        policy = BatchingSpec(max_batch_size=16, max_queue_delay_us=5_000_000)
        waiting = [asyncio.ensure_future(b.submit("m", policy, fp32_req(rows(1)), None, None)) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert b.pending == 3
        await b.drain()
        assert all(w.done() for w in waiting) and len(up.calls) == 1 and b.pending == 0
        await b.submit("m", policy, fp32_req(rows(1)), None, None)
        assert len(up.calls) == 2
    _run(main())
