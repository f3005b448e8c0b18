"""fastpath.wire: scan_model / scan_fields vs the real protobuf parser and the Python twin."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpath import reference as ref
from fastpath import wire as fast
from fastpath.errors import WireError

service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
from google.protobuf.message import DecodeError  # noqa: E402  (after the importorskip guard)

IMPLS = [pytest.param(fast, id="compiled"), pytest.param(ref, id="reference")]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.text(max_size=20)


@st.composite
def infer_requests(draw: Any) -> Any:
    req = service_pb2.ModelInferRequest(
        model_name=draw(texts), model_version=draw(texts), id=draw(texts)
    )
    for key in draw(st.lists(st.text(max_size=6), max_size=3)):
        req.parameters[key].string_param = draw(texts)
    for _ in range(draw(st.integers(0, 3))):
        tensor = req.inputs.add(name=draw(texts), datatype=draw(st.sampled_from(["FP32", "BYTES"])))
        tensor.shape.extend(draw(st.lists(st.integers(-1, 2**40), max_size=4)))
        req.raw_input_contents.append(draw(st.binary(max_size=300)))
    for _ in range(draw(st.integers(0, 2))):
        req.outputs.add(name=draw(texts))
    return req


def outcome(fn: Any, buf: bytes) -> tuple[str, Any]:
    try:
        return "ok", fn(buf)
    except WireError as exc:
        return "err", str(exc)


def test_compiled() -> None:
    assert fast.__file__ is not None and fast.__file__.endswith((".so", ".pyd"))


@SETTINGS
@given(infer_requests())
def test_scan_model_matches_protobuf(req: Any) -> None:
    buf = req.SerializeToString()
    for impl in (fast, ref):
        assert impl.scan_model(buf) == (req.model_name, req.model_version)
        assert impl.scan_model(memoryview(buf)) == (req.model_name, req.model_version)
        assert impl.scan_model(bytearray(buf)) == (req.model_name, req.model_version)
    assert fast.scan_fields(buf) == ref.scan_fields(buf)


@SETTINGS
@given(infer_requests(), infer_requests())
def test_last_occurrence_wins(a: Any, b: Any) -> None:
    buf = a.SerializeToString() + b.SerializeToString()
    merged = service_pb2.ModelInferRequest()
    merged.ParseFromString(buf)
    assert fast.scan_model(buf) == ref.scan_model(buf) == (merged.model_name, merged.model_version)


@SETTINGS
@given(st.binary(max_size=80))
def test_garbage_agrees(buf: bytes) -> None:
    assert outcome(fast.scan_model, buf) == outcome(ref.scan_model, buf)
    assert outcome(fast.scan_fields, buf) == outcome(ref.scan_fields, buf)
    _agrees_with_protobuf_when_both_parse(buf)


@SETTINGS
@given(infer_requests(), st.data())
def test_mutated_requests_agree(req: Any, data: Any) -> None:
    buf = bytearray(req.SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        pos = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del buf[pos:]
        else:
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
    raw = bytes(buf)
    assert outcome(fast.scan_model, raw) == outcome(ref.scan_model, raw)
    _agrees_with_protobuf_when_both_parse(raw)


def _agrees_with_protobuf_when_both_parse(buf: bytes) -> None:
    msg = service_pb2.ModelInferRequest()
    try:
        msg.ParseFromString(buf)
    except DecodeError:
        return
    kind, value = outcome(fast.scan_model, buf)
    if kind == "ok":
        assert value == (msg.model_name, msg.model_version)


@pytest.mark.parametrize("impl", IMPLS)
def test_errors(impl: Any) -> None:
    cases = {
        b"\x0a\x05abc": "field 1 length 5 at byte 0 runs past the end (3 bytes left)",
        b"\x0a": "truncated field 1 length varint at byte 1",
        b"\x80": "truncated tag varint at byte 0",
        b"\x08" + b"\xff" * 10 + b"\x01": "field 1 varint longer than 10 bytes at byte 1",
        b"\x0b": "field 1 uses group wire type 3",
        b"\x0c": "field 1 uses group wire type 4",
        b"\x0e": "field 1 has invalid wire type 6",
        b"\x0f": "field 1 has invalid wire type 7",
        b"\x00": "invalid field number 0",
        b"\x09\x00\x00": "field 1 fixed64 truncated at byte 1 (2 bytes left)",
        b"\x0d\x00": "field 1 fixed32 truncated",
        b"\x0a\x01\xff": "field model_name is not valid UTF-8",
        b"\x12\x02\xc3\x28": "field model_version is not valid UTF-8",
        b"\xff\xff\xff\xff\x7f": "tag 34359738367 out of range",
    }
    for buf, message in cases.items():
        with pytest.raises(WireError, match="ModelInferRequest: .*" + message.replace("(", r"\(").replace(")", r"\)")):
            impl.scan_model(buf)


@pytest.mark.parametrize("impl", IMPLS)
def test_skips_and_edge_cases(impl: Any) -> None:
    assert impl.scan_model(b"") == ("", "")
    # unknown fields of every valid wire type, a wrong-typed field 1, then the real name
    buf = (
        b"\x18\x96\x01"           # field 3 varint (wrong type for id: skipped)
        + b"\x21" + b"\0" * 8     # field 4 fixed64
        + b"\x2d" + b"\0" * 4     # field 5 fixed32
        + b"\x08\x05"             # field 1 as varint: not a string, skipped
        + b"\x0a\x03abc"          # model_name "abc"
        + b"\x12\x01" + b"7"      # model_version "7"
        + b"\xfa\xff\xff\xff\x0f\x00"  # field 2**29-1, empty length-delimited
    )
    assert impl.scan_model(buf) == ("abc", "7")
    assert impl.scan_model(b"\x8a\x80\x00\x02hi") == ("hi", "")  # non-minimal tag varint
    fields = impl.scan_fields(buf)
    assert [(f, w) for f, w, _, _ in fields] == [(3, 0), (4, 1), (5, 5), (1, 0), (1, 2), (2, 2), (2**29 - 1, 2)]
    assert fields[4][2:] == (21, 24)
    with pytest.raises(WireError, match="C-contiguous"):
        impl.scan_model(memoryview(b"\x0a\x00" * 4)[::2])
