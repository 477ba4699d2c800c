"""uvicorn's httptools protocol with one write per response and bounded connections.

One write: uvicorn writes a response's status line and headers as soon as the app sends
`http.response.start`, then the body in a second `transport.write`: two `send()` system
calls and, with TCP_NODELAY, two TCP segments per response. On loopback or a busy NIC each
one costs about as much as the whole route of a small request. Here the transport is wrapped
so that writes made during one loop iteration are joined and sent once at its end
(`call_soon`), like TCP_CORK or writev. Order is kept, `close()` sends what is pending first,
and a WebSocket upgrade gets the raw transport back (+30-60 % req/s for small requests).

Bounded connections (`ConnectionLimits`, from the PEEPHOLE_* settings), so that slow or
half-open clients cannot hold memory, file descriptors or the event loop:
- at most `max_connections` open (HTTP and WebSocket together): the next one is answered
  503 with Retry-After and closed at once;
- request line and headers within `max_header_bytes` (431) and `header_timeout` (408);
- a body that stops arriving for `body_timeout` is cut: 408 if nothing was answered yet
  (the app sees the client gone and applies nothing), else the connection is closed;
- a connection with no request in progress for `idle_timeout` is closed, also before its
  first request (uvicorn's keep-alive timer starts only after a response).
One timer per server checks every connection a few times per timeout; on the hot path a
request only records when each phase began.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger("peephole.edge")
# This module stays light to import: uvicorn's worker processes import it while they unpickle
# their configuration, before they answer the supervisor's health pings (5 s). What a refusal
# needs from the app (its error wording) is imported when one is written.


class CoalescingTransport(asyncio.Transport):
    """A transport whose `write`s within one loop iteration become one write; everything
    else goes to the transport it wraps."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    @property
    def raw(self) -> asyncio.Transport:
        return self._transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    # -- the rest is the wrapped transport's --------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one connection may hold (see the module's docstring)."""

    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 5.0
    max_connections: int = 2048

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        """From the settings, with max_connections kept below the process's file limit."""
        most = settings.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and most > soft - 128:
            most = max(16, soft - 128)  # room for the models, Redis, logs, the listener
            log.warning(
                "PEEPHOLE_MAX_CONNECTIONS %d is above what the file limit (ulimit -n %d) "
                "allows; using %d",
                settings.max_connections,
                soft,
                most,
            )
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            idle_timeout=settings.keepalive_seconds,
            max_connections=most,
        )

    @property
    def tick(self) -> float:
        """How often the timer looks: a quarter of the shortest timeout (0.05-1 s)."""
        return min(
            1.0, max(0.05, min(self.header_timeout, self.body_timeout, self.idle_timeout) / 4)
        )


# What a connection is doing, for its timeouts (DRAIN: refused, reading what is still coming).
IDLE, HEAD, BODY, APP, DRAIN = range(5)
LINGER_SECONDS = 1.0


class _Watch:
    """The one timer of a server: looks at each connection every `tick` seconds."""

    _of: weakref.WeakKeyDictionary[ServerState, _Watch] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop, state: ServerState, tick: float) -> None:
        self.loop, self.state, self.tick = loop, weakref.ref(state), tick
        self.loop.call_later(tick, self.look)

    @classmethod
    def start(cls, loop: asyncio.AbstractEventLoop, state: ServerState, tick: float) -> None:
        if state not in cls._of:
            cls._of[state] = cls(loop, state, tick)

    def look(self) -> None:
        state = self.state()
        if state is None or self.loop.is_closed():
            return
        now = self.loop.time()
        for conn in list(state.connections):
            if isinstance(conn, CoalescingHttpToolsProtocol):
                conn.check(now)
        self.loop.call_later(self.tick, self.look)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol over a CoalescingTransport (flow control sees the raw transport),
    with the connection limits above. `limits` comes from `app.edge.server.server_options`."""

    def __init__(self, *args: Any, limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits or ConnectionLimits()
        self.phase = IDLE
        self.since = 0.0  # when the phase began (BODY: when a body byte last came)
        self.head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport, self.loop)
        self.since = self.loop.time()
        _Watch.start(self.loop, self.server_state, self.limits.tick)
        if len(self.connections) > self.limits.max_connections:
            self.refuse(503, "too many open connections; retry", {"Retry-After": "1"})

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase == BODY:
            self.since = self.loop.time()
        elif phase != APP:  # headers may be in this chunk: bound them before parsing
            if phase == DRAIN:
                return
            before = self.head_bytes if phase == HEAD else 0
            if before + len(data) > self.limits.max_header_bytes:
                end = data.find(b"\r\n\r\n")
                if before + (end if end >= 0 else len(data)) > self.limits.max_header_bytes:
                    detail = f"request headers over {self.limits.max_header_bytes} bytes"
                    self.refuse(431, detail, linger=True)
                    return
            super().data_received(data)
            if self.phase == HEAD:  # still in the headers after this chunk
                self.head_bytes = before + len(data)
            return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.phase, self.since, self.head_bytes = HEAD, self.loop.time(), 0

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self.phase, self.since = BODY, self.loop.time()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.phase = APP

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.phase == APP:  # else the next (pipelined) request is already coming in
            self.phase, self.since = IDLE, self.loop.time()

    def handle_websocket_upgrade(self) -> None:
        self.phase = APP  # the WebSocket protocol has its own ping timeouts
        wrapped = self.transport
        if isinstance(wrapped, CoalescingTransport):
            wrapped.flush()
            self.transport = wrapped.raw
        super().handle_websocket_upgrade()

    # -- limits --------------------------------------------------------------------------

    def check(self, now: float) -> None:
        """Called by the server's timer: end a connection past its phase's limit."""
        if self.transport.is_closing() or self.phase in (APP, DRAIN):
            return
        waited, lim = now - self.since, self.limits
        if self.phase == IDLE and waited > lim.idle_timeout:
            self.transport.close()
        elif self.phase == HEAD and waited > lim.header_timeout:
            self.refuse(408, f"request headers not complete within {lim.header_timeout:g} s")
        elif self.phase == BODY and waited > lim.body_timeout:
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True  # the app reads "client gone": nothing applied
                self.cycle.message_event.set()
            self.refuse(408, f"no request body byte for {lim.body_timeout:g} s")

    def refuse(
        self, status: int, detail: str, headers: dict[str, str] | None = None, linger: bool = False
    ) -> None:
        """Answer `status` and close, or only close when an answer is already on its way.

        `linger`: the client is still sending, and closing with its bytes unread would reset
        the connection before it reads the answer; so the answer ends our side (FIN), what
        still comes is read and dropped, and the connection closes LINGER_SECONDS later."""
        self.phase = DRAIN if linger else APP
        busy = self.cycle is not None and self.cycle.response_started
        if not busy and not self.transport.is_closing():
            from app.errors import error_parts, status_error

            url: bytes = getattr(self, "url", b"")
            path = url.split(b"?", 1)[0].decode("latin-1")
            code, body, extra = error_parts(path, status_error(status, detail), headers)
            data = orjson.dumps(body)
            head = [STATUS_LINE[code], b"content-type: application/json\r\n"]
            for name, value in {**extra, "content-length": str(len(data))}.items():
                head.append(f"{name.lower()}: {value}\r\n".encode("latin-1"))
            self.transport.write(b"".join([*head, b"connection: close\r\n\r\n", data]))
            log.info("%d %s", code, detail)
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
            return
        self.transport.close()
