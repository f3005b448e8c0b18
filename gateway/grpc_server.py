"""KServe v2 gRPC front end (``inference.GRPCInferenceService``), a thin adapter
over InferenceCore. ModelInfer is registered with no (de)serializers, so the
request bytes reach the core untouched and Triton's response bytes go back as is.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from gateway.core import InferenceCore
from mesh.errors import InvalidInput, MeshError
from meshproto import inference_pb2 as pb

__all__ = ["build_grpc_handler", "SERVER_NAME", "SERVER_VERSION", "EXTENSIONS"]

log = logging.getLogger(__name__)
SERVER_NAME = "triton-mesh"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("classification", "model_repository", "binary_tensor_data", "parameters")

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def _timeout(context: grpc.aio.ServicerContext) -> float | None:
    return context.time_remaining()


def _guard(fn: Handler) -> Handler:
    async def wrapper(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await fn(body, context)
        except MeshError as exc:
            await context.abort(exc.grpc_code, str(exc))
        except Exception as exc:  # a bug: say so, keep serving
            log.exception("internal error in gateway")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal gateway error: {exc!r}; see gateway log")
        raise AssertionError("unreachable")
    return wrapper


def build_grpc_handler(core: InferenceCore) -> grpc.GenericRpcHandler:
    async def model_infer(body: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        return await core.infer_raw(body, _timeout(ctx))

    async def server_live(body: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(body: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerReadyResponse(ready=core.server_ready()).SerializeToString()

    async def server_metadata(body: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION,
                                         extensions=list(EXTENSIONS)).SerializeToString()

    async def model_ready(body: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        req = _parse(pb.ModelReadyRequest, body)
        ready = await core.model_ready(req.name, req.version, _timeout(ctx))
        return pb.ModelReadyResponse(ready=ready).SerializeToString()

    def model_call(method: str, req_type: type) -> Handler:
        async def handler(body: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
            req = _parse(req_type, body)
            return await core.forward_model_call(req.name, method, body, _timeout(ctx))
        return handler

    async def repository_index(body: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        req = _parse(pb.RepositoryIndexRequest, body)
        return core.repository_index(req.ready).SerializeToString()

    async def not_here(body: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        await ctx.abort(grpc.StatusCode.UNIMPLEMENTED,
                        "models are loaded by the mesh scheduler: use `meshctl apply -f SPEC` "
                        "instead of the repository load/unload API")
        raise AssertionError("unreachable")

    async def stream_infer(requests: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for body in requests:
            try:
                raw = await core.infer_raw(body, _timeout(ctx), protocol="grpc-stream")
                yield _stream_response(raw)
            except MeshError as exc:
                # Like Triton: an error on one request of a stream is reported in
                # the stream and the stream goes on.
                yield pb.ModelStreamInferResponse(error_message=str(exc)).SerializeToString()

    unary = {
        "ModelInfer": model_infer,
        "ServerLive": server_live,
        "ServerReady": server_ready,
        "ServerMetadata": server_metadata,
        "ModelReady": model_ready,
        "ModelMetadata": model_call("ModelMetadata", pb.ModelMetadataRequest),
        "ModelConfig": model_call("ModelConfig", pb.ModelConfigRequest),
        "RepositoryIndex": repository_index,
        "RepositoryModelLoad": not_here,
        "RepositoryModelUnload": not_here,
    }
    handlers = {name: grpc.unary_unary_rpc_method_handler(_guard(fn)) for name, fn in unary.items()}
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(stream_infer)
    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers)


def _parse(msg_type: type, body: bytes):  # type: ignore[no-untyped-def]
    try:
        return msg_type.FromString(body)
    except DecodeError as exc:
        raise InvalidInput(f"malformed {msg_type.__name__}: {exc}") from exc


def _stream_response(infer_response: bytes) -> bytes:
    """ModelStreamInferResponse{infer_response=<bytes>} built on the wire, no re-parse."""
    n = len(infer_response)
    head = bytearray([0x12])  # field 2, wire type 2
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            head.append(b | 0x80)
        else:
            head.append(b)
            break
    return bytes(head) + infer_response
