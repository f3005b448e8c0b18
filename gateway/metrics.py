"""Prometheus metrics of the gateway, per model."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["GatewayMetrics"]

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mesh_gateway_requests", "Inference requests received",
                                ["model", "protocol"], registry=self.registry)
        self.errors = Counter("mesh_gateway_errors", "Inference requests that failed",
                              ["model", "protocol", "code"], registry=self.registry)
        self.latency = Histogram("mesh_gateway_request_duration_seconds", "End-to-end request latency",
                                 ["model", "protocol"], buckets=_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("mesh_gateway_in_flight_requests", "Requests in flight",
                               ["model"], registry=self.registry)
        self.batches = Counter("mesh_gateway_batches", "Batched upstream calls (gateway-side dynamic batching)",
                               ["model"], registry=self.registry)
        self.batch_size = Histogram("mesh_gateway_batch_size", "Summed batch size of batched upstream calls",
                                    ["model"], buckets=_BATCH_BUCKETS, registry=self.registry)
        self.unbatched = Counter("mesh_gateway_unbatched", "Requests of batching models sent on their own, by reason",
                                 ["model", "reason"], registry=self.registry)
        self.held = Histogram("mesh_gateway_hold_seconds", "Time requests waited for a first ready replica "
                              "(scale from zero)", ["model"], buckets=_BUCKETS + (20.0, 30.0, 60.0),
                              registry=self.registry)
        self.retries = Counter("mesh_gateway_retries", "Requests retried on another replica",
                               ["model"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
