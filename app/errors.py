"""Errors that carry their HTTP status, and the ONE place that turns any failure into a response.

Every failure the service can meet (our own errors, FastAPI/pydantic validation, unknown
routes, oversized bodies, unexpected bugs) ends here. The body follows the protocol the path
belongs to: `{"detail": "<readable>", ...}` with a documented code (docs/API.md) on the native API,
`{"error": "<readable>"}` with a section 4 code (malformed input is 400, not 422) under /v2,
as Triton answers. `classify` says which error any exception is, `error_parts` how it is
worded; the exception handlers, the edge middlewares and the fast path all answer through
them, and the WebSocket stream words the same errors with `error_payload`.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger("peephole.errors")


class PeepholeError(Exception):
    """Base of every expected failure; `status_code` is the HTTP status it maps to."""

    status_code: int = 500
    default_detail: str = "internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.detail = detail or self.default_detail
        self.headers = headers or {}
        self.extra = extra
        super().__init__(self.detail)

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, **self.extra}


class Unauthorized(PeepholeError):
    status_code = 401
    default_detail = "missing or wrong API key"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class NotFound(PeepholeError):
    status_code = 404
    default_detail = "not found"


class ModelNotFound(NotFound):
    default_detail = "unknown model or version"


class SessionNotFound(NotFound):
    default_detail = "unknown or expired session"


class OffsetConflict(PeepholeError):
    """409: the client's offset is neither the current one nor a retry of the last chunk."""

    status_code = 409

    def __init__(self, current: int, detail: str | None = None) -> None:
        super().__init__(
            detail or f"offset conflict: the session stands at offset {current}", offset=current
        )


class StateLayoutConflict(PeepholeError):
    """409: a session cannot move to a version whose state tensors differ from its own."""

    status_code = 409
    default_detail = "the state layouts differ"


class Gone(PeepholeError):
    """410: the session is pinned to a model version that was unloaded and whose drain ended.

    Never a result from another version: the session's state is still there (export it, or
    migrate the session to a version with the same state layout).
    """

    status_code = 410
    default_detail = "the session's model version was unloaded"


class PayloadTooLarge(PeepholeError):
    status_code = 413
    default_detail = "request too large"


class InvalidInput(PeepholeError):
    status_code = 422
    default_detail = "malformed input"


class CapacityReached(PeepholeError):
    status_code = 429

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(
            detail or "session capacity reached; retry later",
            headers={"Retry-After": str(max(1, int(retry_after)))},
        )


class NotReady(PeepholeError):
    status_code = 503
    default_detail = "not ready"


class ModelUnavailable(NotReady):
    """503 with Retry-After: this server does not hold the session's model version (yet).

    A replica behind the same Redis that has not loaded the version (a rolling update) answers
    this, never another version's result; in poll mode it loads the version on demand.
    """

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(
            detail or "the session's model version is not loaded here; retry",
            headers={"Retry-After": str(max(1, int(retry_after)))},
        )


class ModelRefused(PeepholeError):
    """422 (400 under /v2, as Triton answers a failed load): a version failed validation."""

    status_code = 422
    default_detail = "the model version failed validation"


class ControlDisabled(PeepholeError):
    """Load and unload requests outside PEEPHOLE_MODEL_CONTROL=explicit (409; /v2: 503)."""

    status_code = 409
    default_detail = "model load and unload need PEEPHOLE_MODEL_CONTROL=explicit"


class StoreUnavailable(PeepholeError):
    status_code = 503
    default_detail = "session store unreachable"


class StoreConflict(PeepholeError):
    """Another replica changed the session between our read and our write; run again."""

    status_code = 503
    default_detail = "the session changed concurrently; retry"


class MethodNotAllowed(PeepholeError):
    status_code = 405
    default_detail = "method not allowed"


def json_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type="application/json"
    )


def is_v2(path: str) -> bool:
    """Paths of the Open Inference Protocol (KServe v2), whose errors are `{"error": ...}`."""
    return path == "/v2" or path.startswith("/v2/")


def error_parts(
    path: str, exc: PeepholeError, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) of `exc` worded for the protocol of `path`: /v2 `{"error"}`
    (422 -> 400), else `{"detail", ...}`. Every HTTP error answer is built from this."""
    merged = {**exc.headers, **(headers or {})}
    if is_v2(path):
        status = 400 if exc.status_code == 422 else exc.status_code
        return status, {"error": exc.detail}, merged
    return exc.status_code, exc.body(), merged


def error_response(
    path: str, exc: PeepholeError, headers: dict[str, str] | None = None
) -> Response:
    """`exc` as a Response (see `error_parts`)."""
    return json_response(*error_parts(path, exc, headers))


def status_error(status: int, detail: str, headers: dict[str, str] | None = None) -> PeepholeError:
    """A PeepholeError with an arbitrary status (for errors raised by Starlette itself)."""
    err = PeepholeError(detail, headers=headers)
    err.status_code = status
    return err


def error_payload(exc: PeepholeError) -> dict[str, Any]:
    """The WebSocket form: the HTTP body plus `status`."""
    return {**exc.body(), "status": exc.status_code}


def describe_validation(errors: list[Any]) -> str:
    """One readable line from pydantic/FastAPI error entries ("body.ttl_seconds: ...")."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = err.get("msg", "invalid")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def as_peephole(exc: Exception) -> PeepholeError | None:
    """Our error for any validation failure (used by HTTP handlers and the WebSocket)."""
    if isinstance(exc, PeepholeError):
        return exc
    if isinstance(exc, RequestValidationError):
        return InvalidInput(describe_validation(list(exc.errors())))
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_input=False)
        return InvalidInput(describe_validation(list(errors)))
    return None


def classify(exc: Exception, method: str, path: str) -> PeepholeError:
    """Any exception as the error it is answered with: ours as they are, validation as 422,
    Starlette's HTTP errors by their status (400 -> 422: an unreadable body), anything else a
    500 that is logged with its traceback. The exception handlers and the fast path use it."""
    err = as_peephole(exc)
    if err is not None:
        return err
    if isinstance(exc, StarletteHTTPException):
        status = exc.status_code
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        if status == 404:
            detail = "no such route"
        if status == 400:
            status = 422  # malformed request (e.g. an unreadable body); 400 again under /v2
        return status_error(status, detail, dict(exc.headers or {}))
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return status_error(500, "internal error")


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this path (Starlette's 405 names only the first
    matching route's, so GET /v1/sessions/{id} would hide DELETE), and OPTIONS."""
    routes = request.app.router.routes
    allowed = {"OPTIONS"}
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in routes):
            allowed.add(method)
    return sorted(allowed)


async def _handle(request: Request, exc: Exception) -> Response:
    err = classify(exc, request.method, request.url.path)
    if err.status_code == 405:
        allow = ", ".join(allowed_methods(request))
        if request.method == "OPTIONS":  # what may be sent here: the answer to OPTIONS
            return Response(status_code=204, headers={"Allow": allow})
        err.headers["Allow"] = allow
    return error_response(request.scope["path"], err)


def install_error_handlers(app: FastAPI) -> None:
    """Register the one mapping from exceptions to the documented status codes and bodies."""
    kinds = (PeepholeError, RequestValidationError, ValidationError, StarletteHTTPException)
    for kind in (*kinds, Exception):
        app.add_exception_handler(kind, _handle)
