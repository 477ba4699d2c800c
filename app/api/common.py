"""Shared pieces of the route modules: the documented error responses."""

from __future__ import annotations

from typing import Any

from app.api.schemas import ErrorBody

_WHY = {
    401: "Missing or wrong API key",
    404: "Unknown model, version or session (expired counts as unknown)",
    409: "Offset conflict (`offset` is the session's current offset), or state layouts differ",
    410: "The session's model version was unloaded and its drain ended (export or migrate it)",
    413: "Body, batch or sequence too large",
    422: "Malformed input",
    429: "Session capacity reached (see Retry-After)",
    503: "Not ready, the session store is unreachable, or the session's model version is not "
    "loaded on this server (yet; see Retry-After)",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error codes (401 is added: any route may need a key)."""
    return {c: {"model": ErrorBody, "description": _WHY[c]} for c in sorted({401, *codes})}
