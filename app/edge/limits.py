"""Reading a request body: PEEPHOLE_MAX_BODY_BYTES, enforced before any parsing.

`read_body` is the rule, called by the middleware (for every FastAPI route) and by the fast
path. A declared Content-Length over the limit is answered 413 at once; a body without one
(chunked) is counted as it streams and reading stops at the limit. A client that goes away
before its body is complete gets nothing applied. The middleware reads the whole body before
the route runs and hands it on, so no route reads a body past the limit or a partial one.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge, PeepholeError, error_response

log = logging.getLogger("peephole.edge")


class BodyIncomplete(PeepholeError):
    """The client closed the connection before its body was complete (no one hears the answer;
    it is counted and logged as a client error)."""

    status_code = 400
    default_detail = "the client closed the connection before the request body was complete"


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body over the limit of {limit} bytes", headers={"Connection": "close"}
    )


def declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _gone(scope: Scope, size: int, declared: int | None) -> BodyIncomplete:
    of = f" of {declared} declared" if declared is not None else ""
    where = f"{scope['method']} {scope['path']}"
    log.info("%s: the client left after %d%s body bytes; nothing applied", where, size, of)
    return BodyIncomplete(f"the client closed the connection after {size}{of} body bytes")


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body of an HTTP request, or PayloadTooLarge / BodyIncomplete."""
    declared = declared_length(scope)
    if declared is not None and declared > limit:
        raise too_large(limit)
    message = await receive()
    if message["type"] != "http.request":
        raise _gone(scope, 0, declared)
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise too_large(limit)
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] != "http.request":
            raise _gone(scope, size, declared)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class BodyLimitMiddleware:
    """Reads every HTTP body with `read_body` before the app sees the request."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self.max)
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

        await self.app(scope, replay, send)
