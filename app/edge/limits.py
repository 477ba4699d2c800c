"""PEEPHOLE_MAX_BODY_BYTES, enforced before any parsing.

A declared Content-Length over the limit is answered 413 at once; a body without one
(chunked) is counted as it streams and reading stops at the limit. Whatever the app then
answers is replaced by the same 413, so no route can turn it into something else.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge, error_response


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max = max_body_bytes

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body over the limit of {self.max} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max:
            await self._reject(scope, receive, send)
            return
        seen = 0
        exceeded = False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max:
                    exceeded = True
                    raise self._error()
            return message

        replaced = False

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if exceeded and message["type"] == "http.response.start" and message["status"] != 413:
                replaced = True
                await self._reject(scope, receive, send)
                return
            if replaced:
                return
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = self._error()
        response = error_response(scope["path"], err, {"Connection": "close"})
        await response(scope, receive, send)
