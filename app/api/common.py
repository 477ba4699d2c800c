"""Shared pieces of the route modules: documented error responses, session bodies."""

from __future__ import annotations

from typing import Any

from app.schemas import ErrorBody
from app.sessions.base import Session, iso

_WHY = {
    401: "Missing or wrong API key",
    404: "Unknown model, version or session (expired counts as unknown)",
    409: "Offset conflict; `offset` is the session's current offset",
    413: "Body, batch or sequence too large",
    422: "Malformed input",
    429: "Session capacity reached (see Retry-After)",
    503: "Not ready, or the session store is unreachable",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error codes (401 is added: any route may need a key)."""
    return {c: {"model": ErrorBody, "description": _WHY[c]} for c in sorted({401, *codes})}


def session_body(s: Session) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "model": s.model,
        "version": s.version,
        "offset": s.offset,
        "created_at": iso(s.created_at),
        "expires_at": iso(s.expires_at),
        "ttl_seconds": s.ttl_seconds,
    }
