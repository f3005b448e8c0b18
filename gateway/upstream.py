"""One pooled gRPC channel per upstream Triton, with raw (bytes in, bytes out) calls."""
from __future__ import annotations

from collections.abc import Callable

import grpc

__all__ = ["UpstreamPool", "SERVICE"]

SERVICE = "/inference.GRPCInferenceService/"
RawCall = Callable[..., "grpc.aio.UnaryUnaryCall"]


class UpstreamPool:
    def __init__(self, max_message_bytes: int) -> None:
        self._options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable] = {}

    def raw(self, address: str, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
        """A bytes-to-bytes callable for ``method`` on ``address``: nothing re-serialized."""
        key = (address, method)
        call = self._calls.get(key)
        if call is None:
            ch = self._channels.get(address)
            if ch is None:
                ch = grpc.aio.insecure_channel(address, options=self._options)
                self._channels[address] = ch
            call = ch.unary_unary(SERVICE + method)
            self._calls[key] = call
        return call

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        self._calls.clear()
