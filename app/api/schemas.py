"""Bodies every part of the HTTP API shares: the error body and the health answers."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorBody(BaseModel):
    """Every error: a readable `detail`; a 409 also says the session's current `offset`."""

    detail: str
    offset: int | None = None


class Health(BaseModel):
    status: str
    models: int | None = None
    detail: str | None = None
