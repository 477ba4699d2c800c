"""Session stores: the protocol (base.py) and its implementations (memory.py; redis later)."""

from __future__ import annotations

from app.config import Settings
from app.sessions.base import Session, SessionStore


def make_store(settings: Settings) -> SessionStore:
    """The store PEEPHOLE_SESSION_STORE names."""
    if settings.session_store == "memory":
        from app.sessions.memory import MemorySessionStore

        return MemorySessionStore(
            max_sessions=settings.max_sessions, sweep_seconds=settings.session_sweep_seconds
        )
    try:
        from app.sessions.redis import RedisSessionStore  # type: ignore[import-not-found]
    except ImportError as e:
        raise RuntimeError("PEEPHOLE_SESSION_STORE=redis: the redis store is not installed") from e
    return RedisSessionStore.from_settings(settings)  # type: ignore[no-any-return]


__all__ = ["Session", "SessionStore", "make_store"]
