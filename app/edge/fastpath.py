"""A raw ASGI fast path for the two hot routes, in front of FastAPI.

`POST /v1/models/{name}[/versions/{v}]/predict` and `POST /v1/sessions/{id}/steps` carry
almost all the traffic, and on a small CPU box FastAPI's per-request machinery (routing over
every route, dependency solving, Request objects, three middleware layers) costs more than
the inference itself. This layer answers those two routes directly and hands everything else
to FastAPI unchanged. It runs before FastAPI's own per-request work (telemetry checks,
middleware stack, routing), from `PeepholeAPI.__call__` in app/main.py.

Same semantics as the FastAPI routes: it runs the same route body for predict
(`app.api.v1.predict.predict_body`) and for steps (`app.api.v1.sessions.apply_steps`, one
store access per chunk through `DataPlane.step_parsed`), on the same parsed JSON, and
does what the three middlewares do, in their order: metrics by route template (outermost,
so it sees 401 and 413 too), API keys (before any body is read), the body limit (declared
Content-Length, then streamed bytes; 413 with `Connection: close`). Errors go through the
same mapping (`PeepholeError` -> its status and body; validation -> 422; anything else ->
logged 500). tests/api/v1 exercises this path for every predict and steps call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.datastructures import State
from starlette.types import Receive, Scope, Send

from app.api.v1.predict import predict_body
from app.api.v1.sessions import apply_steps
from app.api.wire import decode_json
from app.dataplane import DataPlane
from app.edge.auth import bearer, key_matches
from app.errors import PayloadTooLarge, Unauthorized, as_peephole
from app.metrics import Metrics

log = logging.getLogger("peephole.fastpath")

PREDICT = "/v1/models/{name}/predict"
PREDICT_VERSION = "/v1/models/{name}/versions/{version}/predict"
STEPS = "/v1/sessions/{session_id}/steps"
_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

Handler = Callable[[DataPlane, list[str], Any], Awaitable[dict[str, Any]]]


async def _predict_route(dp: DataPlane, params: list[str], body: Any) -> dict[str, Any]:
    return await predict_body(dp, params[0], params[1] if len(params) > 1 else None, body)


async def _steps_route(dp: DataPlane, params: list[str], body: Any) -> dict[str, Any]:
    return await apply_steps(dp, params[0], body)


def match(path: str) -> tuple[str, Handler, list[str]] | None:
    """(route template, handler, path parameters) for a hot route, else None.

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
        return STEPS, _steps_route, [parts[3]]
    return None


class FastPath:
    """Answers the hot routes; `PeepholeAPI.__call__` asks it first, FastAPI gets the rest."""

    def __init__(self, state: State, metrics: Metrics, keys: list[str],
                 max_body_bytes: int) -> None:  # fmt: skip
        self.state = state
        self.metrics = metrics
        self.keys = list(keys)
        self.max = max_body_bytes
        self._counters: dict[tuple[str, int], Any] = {}
        self._latency: dict[str, Any] = {}

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
            self._count(template, status, time.perf_counter() - t0)
        return True

    def _count(self, template: str, status: int, seconds: float) -> None:
        """MetricsMiddleware's two series, with the labelled children cached."""
        counter = self._counters.get((template, status))
        if counter is None:
            counter = self.metrics.requests.labels("POST", template, str(status))
            self._counters[(template, status)] = counter
        latency = self._latency.get(template)
        if latency is None:
            latency = self._latency[template] = self.metrics.latency.labels("POST", template)
        counter.inc()
        latency.observe(seconds)

    async def _serve(self, dp: DataPlane, scope: Scope, receive: Receive, send: Send,
                     handler: Handler, params: list[str]) -> int:  # fmt: skip
        if self.keys:
            token = bearer(scope)
            if token is None or not key_matches(token, self.keys):
                err = Unauthorized()
                return await _answer(send, err.status_code, err.body(), err.headers)
        body = await self._body(scope, receive)
        if body is None:
            err = PayloadTooLarge(f"request body over the limit of {self.max} bytes")
            return await _answer(send, err.status_code, err.body(), {"Connection": "close"})
        try:
            out = await handler(dp, params, decode_json(body))
        except Exception as exc:
            pe = as_peephole(exc)
            if pe is None:
                log.exception("unhandled error on POST %s", scope["path"], exc_info=exc)
                return await _answer(send, 500, {"detail": "internal error"})
            return await _answer(send, pe.status_code, pe.body(), pe.headers)
        return await _answer(send, 200, out)

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None past the limit (declared or streamed)."""
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max:
                    return None
                break
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            return body if len(body) <= self.max else None
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; what we have is all there is
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max:
                return None
            chunks.append(chunk)
        return b"".join(chunks)


async def _answer(send: Send, status: int, body: dict[str, Any],
                  headers: dict[str, str] | None = None) -> int:  # fmt: skip
    """One JSON response, as `NumpyJSONResponse` / `json_response` would write it."""
    data = orjson.dumps(body, option=_DUMP_OPTIONS)
    raw = [_JSON, (b"content-length", str(len(data)).encode())]
    if headers:
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
    return status
