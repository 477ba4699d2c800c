"""Reading a request body: its media type, its size, its completeness, and memory at once.

`read_body` is the rule, called by the middleware (for every FastAPI route) and by the fast
path; the middleware reads the whole body before the route runs and hands it on, so no route
ever sees a body past the limit or a partial one.
- /v1 takes JSON only: a POST, PUT or PATCH whose Content-Type is present and not JSON is
  415 before any byte is read (browsers send text/plain, forms and multipart cross-origin
  without asking first). /v2 takes what Triton's clients send.
- PEEPHOLE_MAX_BODY_BYTES: a declared Content-Length over it is 413 at once; a chunked body
  is counted as it streams and reading stops at the limit.
- A client that goes away before its body is complete gets nothing applied (logged as a
  client error); one that stalls is cut by the transport (408, app/edge/transport.py).
- `InFlight`: bodies of LARGE_BODY bytes or more count against PEEPHOLE_MAX_INFLIGHT_BYTES
  from their first byte until their answer is sent; past it, 503 with Retry-After. Parsing
  costs a small multiple of a body (docs/PERFORMANCE.md), so this bounds the memory of
  large requests together; small ones (steps, health) never wait for it. When the last large
  request is done, the allocator is asked to give freed memory back (app/edge/memory.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.wire import BODY_KEY
from app.edge.memory import trimmer
from app.errors import PayloadTooLarge, PeepholeError, error_response

log = logging.getLogger("peephole.edge")

LARGE_BODY = 256 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyIncomplete(PeepholeError):
    """The client closed the connection before its body was complete (no one hears the answer;
    it is counted and logged as a client error)."""

    status_code = 400
    default_detail = "the client closed the connection before the request body was complete"


class UnsupportedMediaType(PeepholeError):
    status_code = 415
    default_detail = "send the body as JSON (Content-Type: application/json)"


class Busy(PeepholeError):
    status_code = 503
    default_detail = "too many large requests at once; retry"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": "1", "Connection": "close"})


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body over the limit of {limit} bytes", headers={"Connection": "close"}
    )


def _length_and_type(scope: Scope) -> tuple[bytes | None, bytes | None]:
    """Content-Length and Content-Type, in one look at the headers."""
    length = kind = None
    for key, value in scope["headers"]:
        if key == b"content-length":
            length = value
        elif key == b"content-type":
            kind = value
    return length, kind


def check_media_type(scope: Scope, declared: bytes | None) -> None:
    """415 for a /v1 body that says it is not JSON (no Content-Type is taken as JSON)."""
    if declared is None or declared == b"application/json" or not scope["path"].startswith("/v1/"):
        return
    if scope["method"] not in _BODY_METHODS:
        return
    kind = declared.split(b";", 1)[0].strip().lower()
    if kind == b"application/json" or (kind.startswith(b"application/") and kind[-5:] == b"+json"):
        return
    raise UnsupportedMediaType(
        f"the body is {kind.decode('latin-1') or 'of no type'}; send JSON with "
        "Content-Type: application/json"
    )


class InFlight:
    """Bytes of large bodies being read, parsed and answered, and their limit."""

    def __init__(self, limit: int, trim: Callable[[], object] | None = None) -> None:
        self.limit = limit
        self.used = 0
        self._trim = trim if trim is not None else trimmer()

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise Busy(
                f"{self.used} bytes of large requests are being served (limit {self.limit}); "
                "retry in a moment"
            )
        self.used += n

    def give(self, n: int) -> None:
        if not n:
            return
        self.used -= n
        if self.used == 0 and self._trim is not None:
            try:
                asyncio.get_running_loop().run_in_executor(None, self._trim)
            except RuntimeError:  # no loop: trim at once
                self._trim()


def _gone(scope: Scope, size: int, declared: int | None) -> BodyIncomplete:
    of = f" of {declared} declared" if declared is not None else ""
    where = f"{scope['method']} {scope['path']}"
    log.info("%s: the client left after %d%s body bytes; nothing applied", where, size, of)
    return BodyIncomplete(f"the client closed the connection after {size}{of} body bytes")


async def read_body(
    scope: Scope, receive: Receive, limit: int, inflight: InFlight | None = None
) -> bytes | bytearray:
    """The whole body of an HTTP request, or the error that stops it (415, 413, 503, or
    BodyIncomplete). A large body holds `len(body)` of `inflight`: give it back after the
    answer (`inflight.give(held(body))`)."""
    raw, media_type = _length_and_type(scope)
    check_media_type(scope, media_type)
    declared = int(raw) if raw is not None and raw.isdigit() else None
    if declared is not None and declared > limit:
        raise too_large(limit)
    message = await receive()
    if message["type"] != "http.request":
        raise _gone(scope, 0, declared)
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise too_large(limit)
        if inflight is not None and len(body) >= LARGE_BODY:
            inflight.take(len(body))
        return body
    buf = bytearray(body)
    taken = 0
    try:
        while True:
            if inflight is not None and len(buf) >= LARGE_BODY:
                inflight.take(len(buf) - taken)
                taken = len(buf)
            if not message.get("more_body", False):
                return buf
            message = await receive()
            if message["type"] != "http.request":
                raise _gone(scope, len(buf), declared)
            buf += message.get("body", b"")
            if len(buf) > limit:
                raise too_large(limit)
    except BaseException:
        if inflight is not None:
            inflight.give(taken)
        raise


def held(body: bytes | bytearray) -> int:
    """What `read_body` took from InFlight for this body."""
    return len(body) if len(body) >= LARGE_BODY else 0


class BodyLimitMiddleware:
    """Reads every HTTP body with `read_body` before the app sees the request."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, inflight: InFlight) -> None:
        self.app = app
        self.max = max_body_bytes
        self.inflight = inflight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self.max, self.inflight)
        except PeepholeError as err:
            await error_response(scope["path"], err)(scope, receive, send)
            return
        pending = True

        async def replay() -> Message:
            nonlocal pending
            if pending:
                pending = False
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        scope[BODY_KEY] = body
        try:
            await self.app(scope, replay, send)
        finally:
            self.inflight.give(held(body))
