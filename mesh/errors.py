"""One error tree, sorted by whose fault it is, mapped once to gRPC and HTTP.

MeshError
 +-- CallerError            the request or spec is wrong; fix the input
 |    +-- InvalidInput      malformed tensor, bad shape/dtype, bad spec field
 |    +-- ModelNotFound     no such model (or version) is deployed
 |    +-- TooLarge          message over the configured limit
 +-- UpstreamError          a peer (Triton, Consul) failed; usually retryable
 |    +-- NoReadyReplica    the model exists but no replica is ready yet
 |    +-- Overloaded        the hold queue / in-flight limit is full
 +-- InternalError          a bug in the mesh; report it
"""
from __future__ import annotations

import grpc

__all__ = [
    "MeshError", "CallerError", "InvalidInput", "ModelNotFound", "TooLarge",
    "UpstreamError", "NoReadyReplica", "Overloaded", "InternalError", "SpecError",
]


class MeshError(Exception):
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500


class CallerError(MeshError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class InvalidInput(CallerError):
    pass


class SpecError(InvalidInput):
    """A deployment spec is invalid; ``path`` names the offending field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class ModelNotFound(CallerError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class TooLarge(CallerError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413


class UpstreamError(MeshError):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class NoReadyReplica(UpstreamError):
    pass


class Overloaded(UpstreamError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class InternalError(MeshError):
    pass


# gRPC status -> HTTP status for errors that come back from Triton.
GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
}
