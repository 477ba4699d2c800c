"""Request count and latency by route template and status, for every HTTP request and socket."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics


def route_template(scope: Scope) -> str:
    """The matched route's template (`/v1/sessions/{session_id}`), never the raw path."""
    return getattr(scope.get("route"), "path", None) or "unmatched"


class MetricsMiddleware:
    """Outermost: sees every answer (401 and 413 included). Pure ASGI, streaming-safe."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500 if scope["type"] == "http" else 1000

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "websocket.close":
                status = message.get("code", 1000)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method = scope.get("method", "WS")
            self.metrics.observe_request(
                method, route_template(scope), status, time.perf_counter() - t0
            )
