"""uvicorn's WebSocket protocol, with a shutdown that lets an applied step send its answer.

At SIGTERM uvicorn closes every WebSocket at once with code 1012. A step the app had
already taken from the socket was then applied to the session while its answer was
dropped: the client saw 1012, not the outputs, and had to learn from a 409 that the
chunk went in. Here, when the app holds a message it has not answered yet, the close is
deferred until that answer is sent (at most the graceful-shutdown time); messages not yet
handed to the app are never applied, and the app is told the socket is going (1012), so a
client resumes from the offset of the last answer it got. Used by `python -m app`.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

DEFAULT_DRAIN_SECONDS = 30.0


class GracefulWebSocketProtocol(WebSocketsSansIOProtocol):
    """Shutdown waits for the answer to the message the app is working on, if any."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unanswered = 0  # messages handed to the app minus data frames it sent back
        self._draining = False

    def shutdown(self) -> None:
        if self._unanswered <= 0 or self.close_sent or not self.handshake_complete:
            super().shutdown()
            return
        if not self._draining:
            self._draining = True
            self.stop_keepalive()
            limit = self.config.timeout_graceful_shutdown or DEFAULT_DRAIN_SECONDS
            self.loop.call_later(limit, self._finish)

    def _finish(self) -> None:
        if not self.transport.is_closing():
            super().shutdown()

    async def receive(self) -> Any:
        if self._draining:  # nothing more is applied once the server is going
            return {"type": "websocket.disconnect", "code": 1012}
        message = await super().receive()
        if message["type"] == "websocket.receive":
            self._unanswered += 1
        return message

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.send":
            self._unanswered -= 1
            if self._draining and self._unanswered <= 0:
                self._finish()
