"""Session stores: the protocol (base.py) and its implementations (memory, shared, redis)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from app.config import Settings
from app.sessions.base import Session, SessionStore


def make_store(settings: Settings, engines: Iterable[object] = ()) -> SessionStore:
    """The store PEEPHOLE_SESSION_STORE names.

    `memory` with a shared table directory (set by `python -m app` when it runs several
    worker processes) is the shared table: per-process dicts would lose sessions. `engines`
    (the served models) size the shared table's records.
    """
    shared = settings.session_store == "shared" or (
        settings.session_store == "memory" and settings.shared_store_dir is not None
    )
    if shared:
        from app.sessions.shared import SharedSessionStore

        specs = [getattr(e, "state_specs", []) for e in engines]
        state = max((sum(math.prod(s.shape) for s in ss) for ss in specs), default=0)
        outputs = max((int(getattr(e, "output_size", 1)) for e in engines), default=1)
        return SharedSessionStore(
            settings.shared_store_dir,
            settings.max_sessions,
            state_floats=max(64, state),
            output_floats=max(64, 16 * outputs),
            sweep_seconds=settings.session_sweep_seconds,
        )
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
