"""Errors raised by the fastpath codecs.

Both are the *caller's* fault (malformed tensors or request bytes), so both derive from
``ValueError``; the gateway maps them to ``INVALID_ARGUMENT`` / HTTP 400.

    ValueError
     +-- CodecError   a tensor's bytes, shape or datatype do not agree
     +-- WireError    a serialized protobuf message is malformed
"""
from __future__ import annotations

__all__ = ["CodecError", "WireError"]


class CodecError(ValueError):
    """A tensor's bytes, shape or datatype disagree.

    The message names the tensor and the mismatch, e.g.
    ``input 'x': FP32 shape [2,3] needs 24 bytes, got 20``.
    """


class WireError(ValueError):
    """A serialized protobuf message is malformed (truncated, bad varint, bad wire type...)."""
