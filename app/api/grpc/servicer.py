"""`inference.GRPCInferenceService`: KServe v2's RPCs and Triton's ModelStreamInfer.

Each unary RPC runs through `_unary`: API key (the `authorization: Bearer <key>` metadata,
except for ServerLive and ServerReady, the health checks), then the handler, then the one
mapping of any failure to a status code and the REST endpoint's message (status.py), and the
call counted by method and code. Inference decodes the protobuf request (codec.py) and hands
it to app/api/v2/protocol.py, as the REST endpoint does, so both run the same checks,
limits and sequence rules on the same data plane. The repository RPCs go through
app/api/v2/model_repository.py to model control, as the REST repository routes do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import grpc

from app.api.grpc import codec
from app.api.grpc import status as gstatus
from app.api.grpc._proto import grpc_service_pb2 as pb
from app.api.grpc._proto import grpc_service_pb2_grpc as pb_grpc
from app.api.grpc._proto import model_config_pb2 as mc
from app.api.grpc.stream import answer_stream
from app.api.v2 import model_repository, protocol
from app.dataplane import DataPlane
from app.edge.auth import key_matches, parse_bearer
from app.edge.limits import LARGE_BODY, InFlight
from app.errors import ModelNotFound, PeepholeError, Unauthorized, as_peephole, status_error
from app.inference.control import ModelControl
from app.metrics import Metrics

log = logging.getLogger("peephole.grpc")

SERVICE = "inference.GRPCInferenceService"
_OK = grpc.StatusCode.OK
R = TypeVar("R")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class Meter:
    """Calls by method and code, and stream messages by code (children cached: hot path)."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.metrics = metrics
        self._calls: dict[tuple[str, str], Any] = {}
        self._latency: dict[str, Any] = {}
        self._messages: dict[str, Any] = {}

    def call(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        if self.metrics is None:
            return
        name = code.name
        counter = self._calls.get((method, name))
        if counter is None:
            counter = self._calls[(method, name)] = self.metrics.grpc_requests.labels(method, name)
        latency = self._latency.get(method)
        if latency is None:
            latency = self._latency[method] = self.metrics.grpc_latency.labels(method)
        counter.inc()
        latency.observe(seconds)

    def message(self, code: grpc.StatusCode) -> None:
        if self.metrics is None:
            return
        counter = self._messages.get(code.name)
        if counter is None:
            counter = self._messages[code.name] = self.metrics.grpc_stream_messages.labels(
                code.name
            )
        counter.inc()


def _unary(method: str, *, open_: bool = False) -> Callable[[Handler], Handler]:
    """Key check, error mapping and metrics around one unary RPC handler."""

    def wrap(fn: Handler) -> Handler:
        async def rpc(self: InferenceServicer, request: Any,
                      context: grpc.aio.ServicerContext[Any, Any]) -> Any:  # fmt: skip
            t0 = time.perf_counter()
            code = _OK
            try:
                if not open_:
                    self.authorize(context)
                if type(request) is codec.Malformed:
                    raise request.error()
                return await fn(self, request, context)
            except asyncio.CancelledError:  # the client went away
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                err = self.error(exc, method)
                code = gstatus.code_of(err)
                await context.abort(code, err.detail, gstatus.trailers(err))
            finally:
                self.meter.call(method, code, time.perf_counter() - t0)

        rpc.__name__ = fn.__name__
        rpc.__doc__ = fn.__doc__
        return rpc

    return wrap


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The RPCs of KServe v2 and Triton on one data plane."""

    def __init__(self, dp: DataPlane, control: ModelControl, keys: list[str],
                 metrics: Metrics | None, version: str, inflight: InFlight) -> None:  # fmt: skip
        self.dp = dp
        self.inflight = inflight
        self.control = control
        self.keys = list(keys)
        self.meter = Meter(metrics)
        self.version = version

    # -- shared --------------------------------------------------------------------------

    def authorize(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """PEEPHOLE_API_KEYS: `authorization: Bearer <key>` in the call's metadata."""
        if not self.keys:
            return
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                token = parse_bearer(value)
                break
        if token is None or not key_matches(token, self.keys):
            raise Unauthorized()

    @staticmethod
    def error(exc: BaseException, method: str) -> PeepholeError:
        """Any failure as our error; unexpected ones are logged and become INTERNAL."""
        err = as_peephole(exc) if isinstance(exc, Exception) else None
        if err is None:
            log.error("unhandled error in %s", method, exc_info=exc)
            return gstatus.INTERNAL
        return err

    def hold(self, request: Any) -> int:
        """A large request's tensor bytes, taken from the in-flight budget HTTP bodies and
        WebSocket messages share (past it: Busy, 503 in REST, UNAVAILABLE here); 0 for a
        small one, which never waits for it."""
        n = codec.tensor_bytes(request)
        if n < LARGE_BODY:
            return 0
        self.inflight.take(n)
        return n

    async def infer(self, request: Any, response: Any) -> Any:
        """Answer one `ModelInferRequest` into the `ModelInferResponse` `response`; raises
        our errors."""
        if type(request) is codec.Malformed:
            raise request.error()
        taken = self.hold(request)
        try:
            name, version = request.model_name, request.model_version or None
            resolved = protocol.resolve(self.dp, name, version)
            req = codec.decode_request(request)
            engine, out = await protocol.run(self.dp, name, version, resolved, req)
            return codec.encode_response(response, engine.name, engine.version, req.id, out)
        finally:
            self.inflight.give(taken)

    async def answer(self, request: Any) -> Any:
        """A stream's answer to one request: its response, or its error in `error_message`
        (with the request's id, so that a client of many sequences knows which failed)."""
        answer = pb.ModelStreamInferResponse()
        try:
            await self.infer(request, answer.infer_response)
        except Exception as exc:
            err = self.error(exc, "ModelStreamInfer")
            self.meter.message(gstatus.code_of(err))
            answer = pb.ModelStreamInferResponse(error_message=err.detail)
            if type(request) is not codec.Malformed:
                failed = answer.infer_response
                failed.model_name = request.model_name
                failed.model_version = request.model_version
                failed.id = request.id
            return answer
        self.meter.message(_OK)
        return answer

    def order_key(self, request: Any) -> tuple[str, str, int | str] | None:
        """Requests with the same key are answered in order: model version and sequence id."""
        if type(request) is codec.Malformed:
            return None
        p = request.parameters.get("sequence_id")
        which = None if p is None else p.WhichOneof("parameter_choice")
        if which is None:
            return None
        seq = getattr(p, which)
        if not seq or type(seq) not in (int, str):
            return None
        # by address, as protocol.sequence_key: a sequence on a draining version stays ordered
        return request.model_name, request.model_version, seq

    def method(self, name: str) -> Callable[..., Any]:
        """The handler of RPC `name`: ours, or UNIMPLEMENTED with a reason."""
        own = getattr(type(self), name, None)
        if own is not None and own is not getattr(pb_grpc.GRPCInferenceServiceServicer, name):
            return getattr(self, name)  # type: ignore[no-any-return]

        @_unary(name)
        async def unimplemented(self: InferenceServicer, request: Any, context: Any) -> Any:
            raise status_error(501, f"{name} is not implemented by this server")

        return lambda request, context: unimplemented(self, request, context)

    # -- health and metadata -------------------------------------------------------------

    @_unary("ServerLive", open_=True)
    async def ServerLive(self, request: Any, context: Any) -> Any:
        """Live while the process runs (open, like /v2/health/live)."""
        return pb.ServerLiveResponse(live=True)

    @_unary("ServerReady", open_=True)
    async def ServerReady(self, request: Any, context: Any) -> Any:
        """Every accepted model loaded and the session store answering (open)."""
        ok, _ = await self.dp.ready()
        return pb.ServerReadyResponse(ready=ok)

    @_unary("ModelReady")
    async def ModelReady(self, request: Any, context: Any) -> Any:
        """A served version is loaded; an unknown one is not ready (Triton answers so too)."""
        try:
            self.dp.model(request.name, request.version or None)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_unary("ServerMetadata")
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(
            name=protocol.SERVER_NAME, version=self.version, extensions=protocol.EXTENSIONS
        )

    @_unary("ModelMetadata")
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        """Tensors of a version (newest when `version` is empty): x in, y out, states both."""
        meta = protocol.model_metadata(self.dp, request.name, request.version or None)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    @_unary("ModelConfig")
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        """The configuration Triton would show for this model: explicit batch dimension
        (max_batch_size 0), FP32 tensors, and the sequence batcher (idle = session TTL)."""
        meta = protocol.model_metadata(self.dp, request.name, request.version or None)

        def tensor(kind: type, t: dict[str, Any], **kw: Any) -> Any:
            return kind(name=t["name"], data_type=mc.TYPE_FP32, dims=t["shape"], **kw)

        x, *states = meta["inputs"]

        idle_us = self.dp.settings.session_ttl_seconds * 1_000_000
        config = mc.ModelConfig(
            name=meta["name"],
            platform=meta["platform"],
            backend="onnxruntime",
            max_batch_size=0,
            input=[
                tensor(mc.ModelInput, x),
                *(tensor(mc.ModelInput, t, optional=True) for t in states),
            ],
            output=[tensor(mc.ModelOutput, t) for t in meta["outputs"]],
            sequence_batching=mc.ModelSequenceBatching(max_sequence_idle_microseconds=idle_us),
        )
        return pb.ModelConfigResponse(config=config)

    # -- inference -----------------------------------------------------------------------

    @_unary("ModelInfer")
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        """Stateless, or one request of a sequence (`sequence_id` parameters, batch 1)."""
        return await self.infer(request, pb.ModelInferResponse())

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> None:
        """Bidirectional: each request answered by one response, in order per sequence; a
        failed request is answered with `error_message` and the stream stays open. (Read
        and written with the context's read and write, stream.py; `request_iterator` is not
        used: grpc.aio allows one or the other.)"""
        t0 = time.perf_counter()
        code = _OK
        try:
            self.authorize(context)
            await answer_stream(self.answer, self.order_key, context.read, context.write)
        except asyncio.CancelledError:  # the client went away
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            err = self.error(exc, "ModelStreamInfer")
            code = gstatus.code_of(err)
            await context.abort(code, err.detail)
        finally:
            self.meter.call("ModelStreamInfer", code, time.perf_counter() - t0)

    # -- model repository ------------------------------------------------------------------

    @_unary("RepositoryIndex")
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        """Every version in the repository or held, with Triton's states (`ready`: only the
        versions ready to serve)."""
        model_repository.check_repository_name(request.repository_name)
        entries = await model_repository.index(self.control, request.ready)
        model_index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[model_index(**e) for e in entries])

    @_unary("RepositoryModelLoad")
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        """Validate, warm up and serve every version of the model in the repository (or the
        `version` parameter's); PEEPHOLE_MODEL_CONTROL=explicit only."""
        await self._change("load", request)
        return pb.RepositoryModelLoadResponse()

    @_unary("RepositoryModelUnload")
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        """Unload the model (or the `version` parameter's): its sequences drain on it."""
        await self._change("unload", request)
        return pb.RepositoryModelUnloadResponse()

    async def _change(self, action: Literal["load", "unload"], request: Any) -> None:
        model_repository.check_repository_name(request.repository_name)
        params = codec.parameters(request.parameters)
        await model_repository.change(self.control, action, request.model_name, params)
