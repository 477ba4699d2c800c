"""Session stores: the protocol (base.py) and its implementations (memory, lmdb, redis)."""

from __future__ import annotations

from app.config import Settings
from app.sessions.base import Session, SessionStore


def make_store(settings: Settings) -> SessionStore:
    """The store PEEPHOLE_SESSION_STORE names (no store is ever chosen for the user)."""
    if settings.session_store == "memory":
        from app.sessions.memory import MemorySessionStore

        return MemorySessionStore(
            max_sessions=settings.max_sessions, sweep_seconds=settings.session_sweep_seconds
        )
    if settings.session_store == "lmdb":
        from app.sessions.lmdb import LMDBSessionStore

        return LMDBSessionStore(
            settings.lmdb_path,
            settings.max_sessions,
            sweep_seconds=settings.session_sweep_seconds,
            map_bytes=settings.lmdb_map_bytes,
        )
    from app.sessions.redis import RedisSessionStore

    return RedisSessionStore.from_settings(settings)


def describe_store(settings: Settings) -> str:
    """Which store and where, for the start-up log (no secrets: a Redis password is hidden)."""
    if settings.session_store == "memory":
        return "memory (in this process; sessions end with it)"
    if settings.session_store == "lmdb":
        where = settings.lmdb_path or "a private directory for this process"
        n = settings.worker_processes
        return f"lmdb at {where} (shared by {n} worker{'s' * (n > 1)} and any process opening it)"
    from urllib.parse import urlsplit

    url = urlsplit(settings.redis_url)
    if url.password is not None:
        netloc = f"{url.username or ''}:***@{url.hostname}" + (f":{url.port}" if url.port else "")
        url = url._replace(netloc=netloc)
    return f"redis at {url.geturl()} (key prefix {settings.redis_prefix!r})"


__all__ = ["Session", "SessionStore", "describe_store", "make_store"]
