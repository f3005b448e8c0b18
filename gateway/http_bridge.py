"""KServe v2 HTTP/REST bridge, including Triton's binary-tensor extension.

A thin adapter: it turns a JSON (+ binary) request into a ModelInferRequest with
raw contents, asks the same InferenceCore as the gRPC front end, and renders the
response as JSON, with binary outputs where the client asked for them.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from fastpath.codec import json_to_raw, raw_to_json
from fastpath.errors import CodecError
from gateway.core import InferenceCore
from gateway.grpc_server import EXTENSIONS, SERVER_NAME, SERVER_VERSION
from gateway.metrics import GatewayMetrics
from mesh.errors import InvalidInput, MeshError
from meshproto import inference_pb2 as pb

__all__ = ["build_http_app", "build_metrics_app"]

log = logging.getLogger(__name__)
_HEADER_LEN = "Inference-Header-Content-Length"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def build_http_app(core: InferenceCore, metrics: GatewayMetrics, max_body_bytes: int,
                   timeout_s: float | None = None) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_errors_middleware])

    async def live(_: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(_: web.Request) -> web.Response:
        return web.Response(status=200 if core.server_ready() else 503)

    async def server_metadata(_: web.Request) -> web.Response:
        return web.json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)})

    async def model_ready(req: web.Request) -> web.Response:
        ok = await core.model_ready(req.match_info["model"], req.match_info.get("version", ""), timeout_s)
        return web.Response(status=200 if ok else 400)

    async def model_metadata(req: web.Request) -> web.Response:
        name, version = req.match_info["model"], req.match_info.get("version", "")
        raw = await core.forward_model_call(
            name, "ModelMetadata", pb.ModelMetadataRequest(name=name, version=version).SerializeToString(), timeout_s)
        md = pb.ModelMetadataResponse.FromString(raw)
        return web.json_response({
            "name": md.name, "versions": list(md.versions), "platform": md.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in md.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in md.outputs],
        })

    async def model_config(req: web.Request) -> web.Response:
        # The config's JSON form is Triton's to render (its schema is not ours):
        # ask a ready replica's HTTP endpoint and pass the answer on.
        status, body = await core.model_config_json(req.match_info["model"], req.match_info.get("version", ""),
                                                    timeout_s)
        return web.Response(status=status, body=body, content_type="application/json")

    async def repository_index(req: web.Request) -> web.Response:
        body = await req.read()
        ready_only = bool(json.loads(body).get("ready", False)) if body else False
        index = core.repository_index(ready_only)
        return web.json_response([{"name": m.name, "state": m.state, **({"reason": m.reason} if m.reason else {})}
                                  for m in index.models])

    async def infer(req: web.Request) -> web.Response:
        model, version = req.match_info["model"], req.match_info.get("version", "")
        body = await req.read()
        request, binary_outputs = _to_proto(model, version, body, req.headers.get(_HEADER_LEN))
        resp = await core.infer(request, timeout_s, protocol="http")
        return _from_proto(resp, binary_outputs)

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain")

    r = app.router
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    r.add_get("/v2", server_metadata)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(base, model_metadata)
        r.add_get(base + "/ready", model_ready)
        r.add_get(base + "/config", model_config)
        r.add_post(base + "/infer", infer)
    r.add_post("/v2/repository/index", repository_index)
    r.add_get("/metrics", metrics_handler)
    return app


def build_metrics_app(metrics: GatewayMetrics) -> web.Application:
    app = web.Application()

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain")

    app.router.add_get("/metrics", metrics_handler)
    return app


@web.middleware
async def _errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except MeshError as exc:
        return _error(exc.http_status, str(exc))
    except web.HTTPRequestEntityTooLarge as exc:
        return _error(413, f"request body too large: {exc.text}; the gateway's limit is set by --max-message-bytes")
    except web.HTTPException:
        raise
    except Exception as exc:  # a bug: say so, keep serving
        log.exception("internal error in HTTP bridge")
        return _error(500, f"internal gateway error: {exc!r}; see gateway log")


# -- JSON <-> proto ------------------------------------------------------------
def _param(value: Any, where: str) -> pb.InferParameter:
    p = pb.InferParameter()
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    elif isinstance(value, str):
        p.string_param = value
    else:
        raise InvalidInput(f"{where}: parameter values must be bool, number or string, got {type(value).__name__}")
    return p


def _to_proto(model: str, version: str, body: bytes, header_len: str | None
              ) -> tuple[pb.ModelInferRequest, dict[str, bool]]:
    if header_len is not None:
        try:
            n = int(header_len)
        except ValueError:
            raise InvalidInput(f"{_HEADER_LEN} must be an integer, got {header_len!r}") from None
        if not 0 <= n <= len(body):
            raise InvalidInput(f"{_HEADER_LEN} is {n} but the body has {len(body)} bytes")
        head, binary = body[:n], memoryview(body)[n:]
    else:
        head, binary = body, memoryview(b"")
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object with 'inputs'")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("request must have a non-empty 'inputs' list")
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    if isinstance(doc.get("id"), str):
        req.id = doc["id"]
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be an object")
    binary_default = bool(params.pop("binary_data_output", False))
    for k, v in params.items():
        req.parameters[k].CopyFrom(_param(v, f"parameters.{k}"))
    offset = 0
    for i, inp in enumerate(inputs):
        if not isinstance(inp, dict):
            raise InvalidInput(f"inputs[{i}] must be an object")
        name, datatype, shape = inp.get("name"), inp.get("datatype"), inp.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
            raise InvalidInput(f"inputs[{i}] needs 'name' (string), 'datatype' (string) and 'shape' (list)")
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise InvalidInput(f"input '{name}': shape must be a list of integers, got {shape}")
        t = req.inputs.add(name=name, datatype=datatype, shape=shape)
        iparams = dict(inp.get("parameters") or {})
        size = iparams.pop("binary_data_size", None)
        for k, v in iparams.items():
            t.parameters[k].CopyFrom(_param(v, f"input '{name}' parameters.{k}"))
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInput(f"input '{name}': binary_data_size {size} runs past the "
                                   f"{len(binary)} binary bytes after the JSON header")
            req.raw_input_contents.append(bytes(binary[offset:offset + size]))
            offset += size
        elif "data" in inp:
            try:
                req.raw_input_contents.append(json_to_raw(inp["data"], datatype, shape, name))
            except CodecError as exc:
                raise InvalidInput(str(exc)) from exc
        else:
            raise InvalidInput(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} binary bytes after the header are not claimed by any input")
    binary_outputs: dict[str, bool] = {}
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list")
    for j, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InvalidInput(f"outputs[{j}] must be an object with a 'name'")
        o = req.outputs.add(name=out["name"])
        oparams = dict(out.get("parameters") or {})
        binary_outputs[out["name"]] = bool(oparams.pop("binary_data", binary_default))
        for k, v in oparams.items():
            o.parameters[k].CopyFrom(_param(v, f"output '{out['name']}' parameters.{k}"))
    if not outputs and binary_default:
        binary_outputs["*"] = True
    return req, binary_outputs


def _param_value(p: pb.InferParameter) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def _from_proto(resp: pb.ModelInferResponse, binary_outputs: dict[str, bool]) -> web.Response:
    outputs = []
    blobs: list[bytes] = []
    for i, out in enumerate(resp.outputs):
        raw = resp.raw_output_contents[i] if i < len(resp.raw_output_contents) else b""
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        params = {k: _param_value(v) for k, v in out.parameters.items()}
        if binary_outputs.get(out.name, binary_outputs.get("*", False)):
            params["binary_data_size"] = len(raw)
            blobs.append(raw)
        else:
            try:
                entry["data"] = raw_to_json(raw, out.datatype, list(out.shape), out.name)
            except CodecError as exc:
                raise InvalidInput(f"{exc}; request this output with parameters.binary_data=true") from exc
        if params:
            entry["parameters"] = params
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version, "outputs": outputs}
    if resp.id:
        doc["id"] = resp.id
    if resp.parameters:
        doc["parameters"] = {k: _param_value(v) for k, v in resp.parameters.items()}
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return web.Response(body=head, content_type="application/json")
    return web.Response(body=b"".join([head, *blobs]), content_type="application/octet-stream",
                        headers={_HEADER_LEN: str(len(head))})
