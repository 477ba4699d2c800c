"""`create_app(settings)`: the FastAPI application. Heavy objects are built in the lifespan.

Middleware order (outermost first): metrics (sees every answer, 401 and 413 included),
auth (before any body is read), the body reader with its limit, then the routes. The two hot
routes are answered by the fast path (app/edge/fastpath.py) with the same rules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.docs import install_docs
from app.api.main import api_router
from app.api.v1.schemas import limits_in_schema
from app.api.wire import NumpyJSONResponse
from app.config import Settings
from app.dataplane import DataPlane
from app.edge.auth import AuthMiddleware
from app.edge.fastpath import FastPath
from app.edge.limits import BodyLimitMiddleware, InFlight
from app.edge.memory import return_large_blocks
from app.edge.metrics import MetricsMiddleware
from app.errors import install_error_handlers
from app.inference.batcher import BatchingRunner
from app.inference.control import ModelControl
from app.inference.engine import thread_plan
from app.inference.registry import ModelRegistry
from app.inference.repository import scan_repository
from app.metrics import Metrics
from app.sessions import SessionStore, make_store
from app.version import __version__

log = logging.getLogger("peephole")

DESCRIPTION = """Serve peephole LSTM networks with ONNX Runtime: whole-sequence predictions
and stateful streaming sessions that keep the LSTM state between calls.

**Errors** are `{"detail": "..."}` on the native API (`/v1`) and `{"error": "..."}` under
`/v2`: 401 missing or wrong key, 404 unknown model, version or session, 409 offset conflict
(with the session's `offset`), 413 too large, 415 not JSON, 422 malformed input, 429 session
capacity (with `Retry-After`), 503 not ready or the session store unreachable.

**Keys**: when the server has API keys, send `Authorization: Bearer <key>` (the Authorize
button here takes it). The health routes, `/ui` and these docs stay open.

**WebSocket** `ws://<host>/v1/sessions/{session_id}/stream` (not listed below: OpenAPI has
no WebSocket operations). Each text message `{"inputs": [[...], ...], "offset": <int>?,
"return_internals": <bool>?}` is answered with the body `POST .../steps` gives
(`{"session_id", "offset", "outputs"}`), in order, with the same offset and retry rules.
An error is answered `{"detail", "status"}` (a 409 also carries `offset`) and the socket
stays open; an unknown or expired session gets `{"detail", "status": 404}` and close code
4404; a wrong key gets close code 4401 (a browser may pass `?access_token=<key>`).
"""


def build_registry(settings: Settings, intra_op_threads: int) -> ModelRegistry:
    scan = scan_repository(settings.model_repository)
    registry = ModelRegistry.build(scan, settings.provider, intra_op_threads)
    log_models(settings, registry)
    return registry


def log_models(settings: Settings, registry: ModelRegistry) -> None:
    """The start-up lines about inference: provider, models served, models refused (why)."""
    engines = registry.engines()
    providers = sorted({e.provider for e in engines}) or ["none (no model loaded)"]
    log.info("provider: %s (PEEPHOLE_PROVIDER=%s)", ", ".join(providers), settings.provider)
    served = ", ".join(f"{e.name}/{e.version}" for e in engines)
    log.info("models served from %s: %s", settings.model_repository, served or "none")
    if not engines:
        log.warning("no model is served: check PEEPHOLE_MODEL_REPOSITORY")
    if registry.refused:
        why = "; ".join(f"{k} ({v})" for k, v in sorted(registry.refused.items()))
        log.warning("models refused: %s", why)


def create_app(
    settings: Settings | None = None,
    *,
    registry: ModelRegistry | None = None,
    store: SessionStore | None = None,
) -> FastAPI:
    """The app; `registry` and `store` may be given (tests, embedding), else built from settings."""
    settings = settings or Settings()
    metrics = Metrics()
    # the cores of this worker process: python -m app may run several on the machine
    cores = max(1, settings.cores // settings.worker_processes)
    workers, intra = thread_plan(cores, settings.inference_threads, settings.intra_op_threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # `is None`, not `or`: an empty registry is falsy (it has a length) yet was given
        reg = registry
        if reg is None:
            reg = await asyncio.to_thread(build_registry, settings, intra)
        st = store if store is not None else make_store(settings)
        await st.start()
        runner = BatchingRunner(
            workers,
            metrics.observe_inference,
            max_size=settings.batch_max_size,
            max_wait_ms=settings.batch_max_wait_ms,
            inline_ms=settings.batch_inline_ms,
        )
        app.state.dataplane = dp = DataPlane(reg, st, runner, settings, metrics)
        control = ModelControl(
            reg, settings, store=st, metrics=metrics, forget=runner.forget, intra_op_threads=intra
        )
        dp.retry_after, dp.on_missing = control.retry_after, control.request
        app.state.control = control
        grpc_server = None
        try:
            await control.start()
            if settings.grpc_port:  # the same data plane over gRPC (app/api/grpc)
                from app.api.grpc.server import GrpcServer

                grpc_server = GrpcServer(
                    settings, dp, control, metrics, app.version, app.state.inflight
                )
                await grpc_server.start()
            log.info(
                "ready: %d inference threads x %d ONNX Runtime threads; model control %s",
                workers,
                intra,
                settings.model_control,
            )
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(settings.graceful_shutdown_seconds)
            await control.stop()
            await st.close()
            runner.close()
            metrics.close()

    app = PeepholeAPI(
        title="Peephole",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=NumpyJSONResponse,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(api_router)
    install_docs(app)
    documented = app.openapi

    def openapi() -> dict[str, Any]:  # the settings' limits in the request schemas, once
        first = app.openapi_schema is None
        schema = documented()
        if first:
            s = settings
            limits_in_schema(schema, s.max_batch_size, s.max_steps, s.max_ttl_seconds)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    # one budget of large bodies for HTTP (middleware and fast path) and WebSocket messages
    app.state.inflight = InFlight(settings.inflight_bytes)
    return_large_blocks()
    app.add_middleware(
        BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, inflight=app.state.inflight
    )
    app.add_middleware(AuthMiddleware, keys=settings.api_keys)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


class PeepholeAPI(FastAPI):
    """FastAPI, with the hot routes answered before any of its per-request machinery.

    `POST .../predict` and `POST /v1/sessions/{id}/steps` go to `FastPath`, built with the
    middleware stack from the middlewares on it (same rules, settings, errors and metrics;
    None when the stack holds one it cannot stand in for).
    """

    fast_path: FastPath | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        self.fast_path = FastPath.over(self, stack)
        return stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        if (
            self.fast_path is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and await self.fast_path(scope, receive, send)
        ):
            return
        await super().__call__(scope, receive, send)
