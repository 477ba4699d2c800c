"""What the sync and async transports share: where the server is, and how httpx and
websockets answers and failures become the protocol's `Reply` and `Failure`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from peephole.protocol import RETRY_STATUSES, Call, Failure, Outcome, Reply
from peephole.retry import RetryStats

# A WebSocket closed with these codes says why; the server sends the same reason as a
# message first, which may be lost when the close wins the race.
_CLOSE_CODES = {4401: (401, "missing or wrong API key"), 4404: (404, "unknown or expired session")}


@dataclass(frozen=True)
class Endpoint:
    """The server: base URL, the headers of every request, the per-attempt timeout."""

    url: str
    headers: Mapping[str, str]
    timeout: float

    @classmethod
    def of(
        cls,
        url: str,
        api_key: str | None,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> Endpoint:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the server URL must start with http:// or https://, got {url!r}")
        if timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")
        all_headers = {"User-Agent": "peephole-client", **(headers or {})}
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        return cls(url.rstrip("/"), all_headers, float(timeout))

    def ws_url(self, path: str) -> str:
        return "ws" + self.url[len("http") :] + path

    def ws_options(self) -> dict[str, Any]:
        """websockets' `connect` options, sync and asyncio alike (no compression: numbers
        barely compress, and latency is what a stream is for)."""
        return {
            "additional_headers": dict(self.headers),
            "compression": None,
            "open_timeout": self.timeout,
            "close_timeout": self.timeout,
            "max_size": None,
        }


class SocketBase:
    """One session's WebSocket, opened on first use and again after any failure (the
    transports add connect, exchange, abort and close)."""

    def __init__(self, endpoint: Endpoint, path: str, stats: RetryStats) -> None:
        self.endpoint, self.url, self.stats = endpoint, endpoint.ws_url(path), stats
        self.broken = False  # a connection failed: the next one is a reconnect

    def connecting(self) -> None:
        if self.broken:
            self.stats.count("reconnect")


def _json(content: bytes) -> Any:
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:  # a proxy's HTML error page, say
        return {"detail": content[:300].decode("utf-8", "replace").strip()}


def request_headers(call: Call) -> dict[str, str]:
    """A call's own headers (Idempotency-Key), with the JSON content type when it has a body."""
    return {"Content-Type": "application/json", **call.headers} if call.body else dict(call.headers)


def reply_of(response: httpx.Response) -> Reply:
    return Reply(response.status_code, _json(response.content), dict(response.headers))


def message_reply(data: str | bytes) -> Reply:
    """A stream's answer: the /steps body, or `{"detail", "status"}` for an error."""
    body = _json(data.encode() if isinstance(data, str) else data)
    status = body.get("status", 200) if isinstance(body, dict) else 200
    return Reply(int(status) if isinstance(status, int) else 200, body)


def closed(exc: ConnectionClosed) -> Reply | Failure:
    """A close with one of the server's codes is its answer; any other close is a failure."""
    code = exc.rcvd.code if exc.rcvd is not None else None
    if exc.rcvd is not None and code in _CLOSE_CODES:
        status, detail = _CLOSE_CODES[code]
        return Reply(status, {"detail": exc.rcvd.reason or detail, "status": status})
    return Failure("closed", f"the WebSocket closed ({exc})")


def failure(exc: BaseException) -> Failure | None:
    """The Failure for a transport error worth retrying; None for anything else (re-raised)."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return Failure("timeout", f"no answer in time ({type(exc).__name__})")
    if isinstance(exc, httpx.TransportError | OSError | EOFError):
        return Failure("connection", f"{type(exc).__name__}: {exc}".rstrip(": "))
    if isinstance(exc, InvalidHandshake) and not isinstance(exc, InvalidURI):
        return Failure("connection", f"WebSocket handshake failed: {exc}")
    return None


def socket_outcome(exc: Exception) -> Outcome:
    """What a failed WebSocket exchange means: the server's answer when it gave one (a close
    code, a refused handshake), else a Failure to retry; None: not ours, re-raise."""
    if isinstance(exc, ConnectionClosed):
        return closed(exc)
    if isinstance(exc, InvalidStatus) and exc.response.status_code not in RETRY_STATUSES:
        return Reply(exc.response.status_code, _json(exc.response.body or b""))
    return failure(exc)
