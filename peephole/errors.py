"""Typed errors for every status the server documents, carrying the server's `detail`.

One function, `error_for`, turns a reply (HTTP or a WebSocket error message, which carry
the same body) into the exception; the sync and async clients both raise through it.
"""

from __future__ import annotations

from typing import Any


class PeepholeError(Exception):
    """Base of every error this client raises; `status_code` is the server's HTTP status
    (None when no server answered), `detail` its readable reason, `body` the whole reply."""

    def __init__(
        self, detail: str, status_code: int | None = None, body: dict[str, Any] | None = None
    ) -> None:
        self.detail = detail
        self.status_code = status_code
        self.body = body or {}
        super().__init__(detail if status_code is None else f"{status_code}: {detail}")


class Unauthorized(PeepholeError):
    """401: the API key is missing or wrong."""


class NotFound(PeepholeError):
    """404 (base of the two below)."""


class ModelNotFound(NotFound):
    """404: no such model or version on this server."""


class SessionNotFound(NotFound):
    """404: the session is unknown, expired or deleted."""


class OffsetConflict(PeepholeError):
    """409: the session does not stand where this client believed, and the chunk is not a
    retry of the last one the server applied. Nothing was applied by the call that raised it.

    `offset` is the server's current offset, `client_offset` the one this client sent.
    """

    def __init__(
        self,
        detail: str,
        status_code: int | None = 409,
        body: dict[str, Any] | None = None,
        *,
        offset: int | None = None,
        client_offset: int | None = None,
    ) -> None:
        super().__init__(detail, status_code, body)
        self.offset = offset
        self.client_offset = client_offset


class VersionGone(PeepholeError):
    """410: the session's model version was unloaded and its drain ended. Nothing was applied;
    the state can still be read, and `migrate` moves the session to a version with the same
    state layout."""


class IncompatibleVersion(PeepholeError):
    """409 from `migrate`: the target version's state layout differs from the session's."""


class PayloadTooLarge(PeepholeError):
    """413: body, batch, sequence (or the response) over the server's limits."""


class InvalidInput(PeepholeError, ValueError):
    """422 (or refused before sending): wrong shape, wrong feature count, NaN, bad value."""


class CapacityReached(PeepholeError):
    """429: the server holds as many sessions as it may; `retry_after` is in seconds."""

    def __init__(
        self,
        detail: str,
        status_code: int | None = 429,
        body: dict[str, Any] | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail, status_code, body)
        self.retry_after = retry_after


class Unavailable(PeepholeError):
    """The server could not be reached or kept answering 502/503/504 until the retry budget
    ran out. `status_code` is the last status seen (None for timeouts and dropped links)."""


_BY_STATUS: dict[int, type[PeepholeError]] = {
    401: Unauthorized,
    409: OffsetConflict,
    410: VersionGone,
    413: PayloadTooLarge,
    422: InvalidInput,
    429: CapacityReached,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def _retry_after(headers: dict[str, str]) -> float | None:
    try:
        return float(headers["retry-after"])
    except (KeyError, ValueError):
        return None


def error_for(
    status: int,
    body: Any,
    headers: dict[str, str] | None = None,
    *,
    session: bool = False,
    client_offset: int | None = None,
) -> PeepholeError:
    """The exception for an error reply. `session`: the request named a session (a 404 is
    then SessionNotFound, else ModelNotFound)."""
    body = body if isinstance(body, dict) else {"detail": str(body or "")}
    detail = str(body.get("detail") or f"HTTP {status}")
    if status == 404:
        return (SessionNotFound if session else ModelNotFound)(detail, status, body)
    if status == 409:
        offset = body.get("offset")
        return OffsetConflict(
            detail,
            status,
            body,
            offset=offset if isinstance(offset, int) else None,
            client_offset=client_offset,
        )
    if status == 429:
        return CapacityReached(detail, status, body, retry_after=_retry_after(headers or {}))
    return _BY_STATUS.get(status, PeepholeError)(detail, status, body)
