"""Gateway-side dynamic batching: many small ModelInfer requests, one upstream call.

Opt-in per model (``spec.predictor.batching``), for models whose first dimension is the
batch dimension. What flows through:

```
 request ──► plan_member ──(unmergeable: reason)──► sent on its own, as received
                 │ (merge key, batch size)
                 v
   queue per (model, merge key) ──► flush when the summed batch reaches maxBatchSize,
                 │                   the oldest member waited maxQueueDelayMicroseconds,
                 │                   or a member's deadline is shorter than the delay
                 v
 build_batched_request (fastpath.batch.merge_raw per input) ──► ONE upstream call
                 │  (same replica choice and UNAVAILABLE retry as unbatched requests)
                 v
 split_response (fastpath.batch.split_raw per output) ──► one response per member
```

Vocabulary: a **member** is one client request waiting in a **group** (members sharing a
**merge key**: model version, input names/datatypes/shape tails, requested outputs and
their parameters, request parameters). A batched call that fails fails exactly its
members, each with the upstream's status and message.

The planning functions (``plan_member``, ``build_batched_request``, ``split_response``)
are pure; ``Batcher`` is the asyncio shell around them. None of them imports the generated
``meshproto`` module: they build messages of the type they are given (``type(request)``),
so tests can drive them with tritonclient's identical ``inference`` messages (the two
modules cannot share a process: they register the same protobuf names).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from fastpath.batch import merge_raw, split_raw
from fastpath.errors import CodecError
from mesh.errors import InternalError, InvalidInput, MeshError, UpstreamError
from mesh.types import BatchingSpec

__all__ = [
    "Batcher", "MergeKey", "QueuedPastDeadline", "Unmergeable", "build_batched_request", "plan_member", "split_response",
    "SEQUENCE_PARAMETERS",
]

if TYPE_CHECKING:
    from meshproto import inference_pb2 as pb

log = logging.getLogger(__name__)

# Request parameters that tie a request to server-side state: never batched.
SEQUENCE_PARAMETERS = frozenset({"sequence_id", "sequence_start", "sequence_end", "correlation_id"})

MergeKey = tuple[Any, ...]
Send = Callable[[str, bytes, "float | None"], Awaitable[bytes]]


@dataclass(frozen=True)
class Unmergeable:
    """Why a request is sent on its own. ``reason`` is a short fixed label (a metric label)."""
    reason: str
    detail: str = ""


def _params_key(params: Any) -> tuple[tuple[str, bytes], ...]:
    if not params:
        return ()
    return tuple(sorted((k, v.SerializeToString()) for k, v in params.items()))


def plan_member(req: pb.ModelInferRequest, max_batch_size: int) -> tuple[MergeKey, int] | Unmergeable:
    """The merge key and batch size of ``req``, or why it cannot be batched.

    A request is batched only if every input carries raw contents that match its shape
    and datatype exactly (checked here, so one malformed request can never shift the
    elements of the others), all inputs share the same first dimension, and nothing
    ties it to server-side state (sequences, shared memory).
    """
    inputs = req.inputs
    if not inputs:
        return Unmergeable("no_inputs")
    raws = req.raw_input_contents
    if len(raws) != len(inputs):
        return Unmergeable("contents", "inputs given as typed 'contents', not raw_input_contents")
    if req.parameters and not SEQUENCE_PARAMETERS.isdisjoint(req.parameters.keys()):
        return Unmergeable("sequence", "sequence/correlation parameters")
    batch = -1
    in_key = []
    seen = set()
    for i, t in enumerate(inputs):
        if t.parameters:
            return Unmergeable("input_parameters", f"input '{t.name}' has parameters")
        if t.name in seen:
            return Unmergeable("duplicate_input", f"input '{t.name}' given twice")
        seen.add(t.name)
        shape = t.shape
        if not shape:
            return Unmergeable("no_batch_dim", f"input '{t.name}' has no dimensions")
        b = shape[0]
        if batch == -1:
            batch = b
        elif b != batch:
            return Unmergeable("batch_dims_differ", f"inputs' first dimensions differ ({batch} vs {b})")
        tail = tuple(shape[1:])
        try:
            split_raw(raws[i], t.datatype, (b,), tail, t.name)  # validates size / BYTES prefixes
        except CodecError as exc:
            return Unmergeable("malformed", str(exc))
        in_key.append((t.name, t.datatype, tail))
    if batch < 1 or batch > max_batch_size:
        return Unmergeable("batch_size", f"batch size {batch} not in [1, {max_batch_size}]")
    out_key = []
    for o in req.outputs:
        if o.parameters and any(k.startswith("shared_memory") for k in o.parameters):
            return Unmergeable("shared_memory", f"output '{o.name}' goes to shared memory")
        out_key.append((o.name, _params_key(o.parameters)))
    key = (req.model_version, tuple(in_key), tuple(out_key), _params_key(req.parameters))
    return key, batch


def build_batched_request(members: list[pb.ModelInferRequest], sizes: list[int]) -> pb.ModelInferRequest:
    """One request whose inputs are the members' inputs concatenated along dim 0.

    The members must share a merge key (``plan_member``); the first one lends its model,
    version, parameters and requested outputs. The batched request carries no id.
    """
    first = members[0]
    total = sum(sizes)
    out = type(first)(model_name=first.model_name, model_version=first.model_version)
    for k, v in first.parameters.items():
        out.parameters[k].CopyFrom(v)
    for i, t in enumerate(first.inputs):
        out.inputs.add(name=t.name, datatype=t.datatype, shape=[total, *t.shape[1:]])
        out.raw_input_contents.append(merge_raw([m.raw_input_contents[i] for m in members]))
    out.outputs.extend(first.outputs)
    return out


def split_response(resp: pb.ModelInferResponse, members: list[pb.ModelInferRequest], sizes: list[int]
                   ) -> list[pb.ModelInferResponse]:
    """Split a batched response into one response per member (its own id, its rows)."""
    total = sum(sizes)
    per_output = []
    if len(resp.raw_output_contents) != len(resp.outputs):
        raise InternalError(f"model '{resp.model_name}': the batched response has {len(resp.outputs)} outputs but "
                            f"{len(resp.raw_output_contents)} raw contents; cannot split it")
    for i, o in enumerate(resp.outputs):
        shape = list(o.shape)
        if not shape or shape[0] != total:
            raise InternalError(
                f"model '{resp.model_name}': output '{o.name}' has shape {shape} for a batch of {total}; "
                "gateway batching needs outputs whose first dimension is the batch (Triton max_batch_size > 0)")
        tail = shape[1:]
        try:
            pieces = split_raw(resp.raw_output_contents[i], o.datatype, sizes, tail, o.name)
        except CodecError as exc:
            raise InternalError(f"model '{resp.model_name}': cannot split the batched output: {exc}") from exc
        per_output.append((o, tail, pieces))
    out = []
    for j, m in enumerate(members):
        r = type(resp)(model_name=resp.model_name, model_version=resp.model_version, id=m.id)
        for k, v in resp.parameters.items():
            r.parameters[k].CopyFrom(v)
        for o, tail, pieces in per_output:
            t = r.outputs.add(name=o.name, datatype=o.datatype, shape=[sizes[j], *tail])
            for k, v in o.parameters.items():
                t.parameters[k].CopyFrom(v)
            r.raw_output_contents.append(bytes(pieces[j]))
        out.append(r)
    return out


# -- the asyncio shell ------------------------------------------------------------
@dataclass(eq=False)
class _Member:
    req: pb.ModelInferRequest
    body: bytes | None
    batch: int
    deadline: float | None
    future: asyncio.Future[Any]


@dataclass(eq=False)
class _Group:
    model: str
    members: list[_Member] = field(default_factory=list)
    size: int = 0
    timer: asyncio.TimerHandle | None = None


class Batcher:
    """Queues of batching-enabled models' requests, flushed into single upstream calls.

    ``send(model, body, timeout) -> bytes`` is the core's upstream path (replica choice,
    retry); ``metrics`` has ``batches``, ``batch_size`` and ``unbatched`` (per model);
    ``request_type`` / ``response_type`` are the ``inference.ModelInfer{Request,Response}``
    message classes.
    """

    def __init__(self, send: Send, metrics: Any, request_type: type, response_type: type) -> None:
        self._send = send
        self._request_type = request_type
        self._response_type = response_type
        self._metrics = metrics
        self._groups: dict[tuple[str, MergeKey], _Group] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def submit(self, model: str, policy: BatchingSpec, req: pb.ModelInferRequest | None,
                     body: bytes | None, timeout: float | None) -> bytes | pb.ModelInferResponse:
        """Answer one request: serialized response bytes (sent alone) or a response message."""
        if req is None:
            assert body is not None
            try:
                req = self._request_type.FromString(body)
            except DecodeError as exc:
                raise InvalidInput(f"malformed ModelInferRequest: {exc}") from exc
        plan = plan_member(req, policy.max_batch_size)
        if self._closed or isinstance(plan, Unmergeable):
            reason = "shutting_down" if self._closed else plan.reason  # type: ignore[union-attr]
            self._metrics.unbatched.labels(model, reason).inc()
            return await self._send(model, body if body is not None else req.SerializeToString(), timeout)
        key, batch = plan
        loop = asyncio.get_running_loop()
        now = loop.time()
        delay = policy.max_queue_delay_us / 1e6
        gk = (model, key)
        group = self._groups.get(gk)
        if group is not None and group.size + batch > policy.max_batch_size:
            self._flush(gk, group)
            group = None
        if group is None:
            group = _Group(model)
            self._groups[gk] = group
            group.timer = loop.call_at(now + delay, self._flush, gk, group)
        fut: asyncio.Future[Any] = loop.create_future()
        group.members.append(_Member(req, body, batch, None if timeout is None else now + timeout, fut))
        group.size += batch
        if group.size >= policy.max_batch_size or (timeout is not None and timeout <= delay):
            self._flush(gk, group)
        return await fut  # type: ignore[no-any-return]

    def _flush(self, gk: tuple[str, MergeKey], group: _Group) -> None:
        if self._groups.get(gk) is group:
            del self._groups[gk]
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        if not group.members:
            return
        members, group.members = group.members, []
        task = asyncio.get_running_loop().create_task(self._run(group.model, members))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, model: str, members: list[_Member]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        live = []
        for m in members:
            if m.future.done():       # the caller went away (cancelled)
                continue
            if m.deadline is not None and m.deadline <= now:
                _fail(m, _deadline_error(model))
                continue
            live.append(m)
        if not live:
            return
        deadlines = [m.deadline for m in live if m.deadline is not None]
        timeout = min(deadlines) - now if deadlines else None
        try:
            if len(live) == 1:
                m = live[0]
                raw = await self._send(model, m.body if m.body is not None else m.req.SerializeToString(), timeout)
                if not m.future.done():
                    m.future.set_result(raw)
                return
            reqs = [m.req for m in live]
            sizes = [m.batch for m in live]
            body = build_batched_request(reqs, sizes).SerializeToString()
            total = sum(sizes)
            self._metrics.batches.labels(model).inc()
            self._metrics.batch_size.labels(model).observe(total)
            raw = await self._send(model, body, timeout)
            try:
                resp = self._response_type.FromString(raw)
            except DecodeError as exc:
                raise InternalError(f"model '{model}': undecodable batched response: {exc}") from exc
            for m, r in zip(live, split_response(resp, reqs, sizes)):
                if not m.future.done():
                    m.future.set_result(r)
        except MeshError as exc:
            for m in live:
                _fail(m, exc)
        except asyncio.CancelledError:
            for m in live:
                _fail(m, InternalError(f"model '{model}': batched call cancelled (gateway shutting down)"))
            raise
        except Exception as exc:  # a bug: fail the members loudly rather than leave them waiting
            log.exception("batched call for %s failed", model)
            for m in live:
                _fail(m, InternalError(f"internal gateway error in batching: {exc!r}; see gateway log"))

    @property
    def pending(self) -> int:
        """Requests queued and not yet flushed."""
        return sum(len(g.members) for g in self._groups.values())

    async def drain(self) -> None:
        """Flush every queue now, wait for the batched calls, then send later requests alone."""
        for gk, group in list(self._groups.items()):
            self._flush(gk, group)
        self._closed = True
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _fail(m: _Member, exc: BaseException) -> None:
    if not m.future.done():
        m.future.set_exception(exc)


class QueuedPastDeadline(UpstreamError):
    """The request's deadline passed while it waited in a batching queue."""
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


def _deadline_error(model: str) -> MeshError:
    return QueuedPastDeadline(f"model '{model}': deadline exceeded while queued for batching")
