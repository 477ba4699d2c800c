"""A raw ASGI fast path for the two hot routes, in front of FastAPI.

`POST /v1/models/{name}[/versions/{v}]/predict` and `POST /v1/sessions/{id}/steps` carry
almost all the traffic, and on a small CPU box FastAPI's per-request machinery (routing over
every route, dependency solving, Request objects, the middleware stack) costs more than the
inference itself. This layer answers those two routes directly, from `PeepholeAPI.__call__`
(app/main.py), and hands everything else to FastAPI unchanged.

It writes no rule of its own: it calls the functions the middlewares call, in their order
(`Metrics.observe_request` outermost, `check_key` before the body is read, `read_body`, then
`classify` and `error_parts` for any failure), takes their settings from the middleware
instances on the app's stack, and runs the routes' own bodies (`predict_body`,
`apply_steps`). `FastPath.over` builds it only when every middleware on the stack is one it
stands in for (`HONOURS`); anything else (CORS, tracing, FastAPI's OpenTelemetry hook) turns
it off, so a middleware added later is never skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.datastructures import State
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.v1.predict import predict_body
from app.api.v1.sessions import apply_steps
from app.api.wire import parse_json
from app.dataplane import DataPlane
from app.edge.auth import AuthMiddleware, check_key
from app.edge.limits import BodyLimitMiddleware, InFlight, held, read_body
from app.edge.metrics import MetricsMiddleware
from app.errors import classify, error_parts
from app.metrics import Metrics

log = logging.getLogger("peephole.fastpath")

PREDICT = "/v1/models/{name}/predict"
PREDICT_VERSION = "/v1/models/{name}/versions/{version}/predict"
STEPS = "/v1/sessions/{session_id}/steps"
_JSON = (b"content-type", b"application/json")
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

Handler = Callable[[DataPlane, Any, Any], Awaitable[dict[str, Any]]]  # (dp, params, body)

# Every middleware this path stands in for, and how it does that middleware's work.
HONOURS: dict[type, str] = {
    MetricsMiddleware: "`Metrics.observe_request` by route template, around everything",
    AuthMiddleware: "`check_key`, before the body is read",
    BodyLimitMiddleware: "`read_body` (media type, limit, whole bodies only, InFlight)",
    ServerErrorMiddleware: "an unexpected error is logged and answered 500 (`classify`)",
    ExceptionMiddleware: "errors answered through `classify` and `error_parts`",
}
# The layers FastAPI puts on every stack, and why the hot routes do not need them.
FRAMEWORK: dict[str, str] = {
    "fastapi.telemetry._asgi.ExceptionTelemetryMiddleware": "acts only with telemetry on "
    "(then this path is off)",
    "fastapi._body_limit.AppBodyLimitMiddleware": "acts only with FastAPI(max_body_size=...) "
    "(then this path is off); PEEPHOLE_MAX_BODY_BYTES is `read_body`'s",
    "fastapi.middleware.asyncexitstack.AsyncExitStackMiddleware": "closes uploaded files; "
    "the hot routes take none",
}


def stands_in_for(layer: object) -> bool:
    kind = type(layer)
    return kind in HONOURS or f"{kind.__module__}.{kind.__qualname__}" in FRAMEWORK


async def _predict_route(dp: DataPlane, params: list[str], body: Any) -> dict[str, Any]:
    return await predict_body(dp, params[0], params[1] if len(params) > 1 else None, body)


def match(path: str) -> tuple[str, Handler, Any] | None:
    """(route template, handler, path parameters) for a hot route, else None: the
    parameters as the handler takes them (a list, or the one session id of the steps route).

    A parameter is one non-empty path segment, as Starlette's `{param}` matches it.
    """
    parts = path.split("/")
    n = len(parts)
    if n < 5 or parts[0] or parts[1] != "v1" or not all(parts[2:]):
        return None
    if parts[2] == "models":
        if n == 5 and parts[4] == "predict":
            return PREDICT, _predict_route, [parts[3]]
        if n == 7 and parts[4] == "versions" and parts[6] == "predict":
            return PREDICT_VERSION, _predict_route, [parts[3], parts[5]]
    elif parts[2] == "sessions" and n == 5 and parts[4] == "steps":
        return STEPS, apply_steps, parts[3]
    return None


def middleware_chain(stack: ASGIApp, end: ASGIApp) -> tuple[list[Any], bool]:
    """The middleware instances of a built Starlette stack, outermost first, and whether
    following each one's `.app` reached `end` (if not, some layer hides what is below it)."""
    chain: list[Any] = []
    layer: Any = stack
    while layer is not end and layer is not None:
        chain.append(layer)
        layer = getattr(layer, "app", None)
    return chain, layer is end


class FastPath:
    """Answers the hot routes; `PeepholeAPI.__call__` asks it first, FastAPI gets the rest."""

    def __init__(self, state: State, metrics: Metrics, keys: list[str], max_body: int,
                 inflight: InFlight) -> None:  # fmt: skip
        self.state = state
        self.metrics = metrics
        self.keys = list(keys)
        self.max_body = max_body
        self.inflight = inflight

    @classmethod
    def over(cls, app: FastAPI, stack: ASGIApp) -> FastPath | None:
        """The fast path for `app` with its built middleware `stack`, or None (with a warning)
        when the stack holds a middleware this path does not stand in for."""
        chain, complete = middleware_chain(stack, app.router)
        foreign = [type(m).__name__ for m in chain if not stands_in_for(m)]
        if not complete:
            foreign.append(f"what {type(chain[-1]).__name__} wraps")
        telemetry = getattr(app, "_native_telemetry", None)
        if telemetry is not None and telemetry.enabled():
            foreign.append("FastAPI's OpenTelemetry instrumentation")
        if getattr(app, "max_body_size", None) is not None:
            foreign.append("FastAPI's max_body_size")
        if foreign:
            log.warning("fast path off: %s would not see the hot routes", ", ".join(foreign))
            return None
        by_type = {type(m): m for m in chain}
        try:
            metrics = by_type[MetricsMiddleware].metrics
            keys = by_type[AuthMiddleware].keys
            body = by_type[BodyLimitMiddleware]
        except KeyError as e:
            log.warning("fast path off: no %s on the stack", e.args[0].__name__)
            return None
        return cls(app.state, metrics, keys, body.max, body.inflight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve the request if it is a hot route (True), else leave it alone (False)."""
        hit = match(scope["path"])
        dp: DataPlane | None = getattr(self.state, "dataplane", None)
        if hit is None or dp is None:
            return False
        template, handler, params = hit
        t0 = time.perf_counter()
        status = 500
        try:
            status = await self._serve(dp, scope, receive, send, handler, params)
        finally:
            self.metrics.observe_request("POST", template, status, time.perf_counter() - t0)
        return True

    async def _serve(self, dp: DataPlane, scope: Scope, receive: Receive, send: Send,
                     handler: Handler, params: Any) -> int:  # fmt: skip
        body: bytes | bytearray = b""
        try:
            try:
                check_key(scope, self.keys)
                body = await read_body(scope, receive, self.max_body, self.inflight)
                out = await handler(dp, params, await parse_json(body))
            except Exception as exc:
                path = scope["path"]
                return await _answer(send, *error_parts(path, classify(exc, "POST", path)))
            return await _answer(send, 200, out)
        finally:
            self.inflight.give(held(body))


async def _answer(send: Send, status: int, body: dict[str, Any],
                  headers: dict[str, str] | None = None) -> int:  # fmt: skip
    """One JSON response, as `NumpyJSONResponse` / `json_response` would write it."""
    data = orjson.dumps(body, option=_DUMP_OPTIONS)
    raw = [_JSON, (b"content-length", b"%d" % len(data))]
    if headers:
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
    return status
