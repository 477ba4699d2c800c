"""The in-process session store: a dict, one asyncio lock per session, a periodic sweep.

Only for a single process (one uvicorn worker); replicas need the redis store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import replace

from app.errors import CapacityReached, SessionNotFound
from app.sessions.base import Session, Sweeper, now

log = logging.getLogger("peephole.sessions")


class MemorySessionStore:
    """Sessions in a dict; expiry checked on every access and swept periodically."""

    def __init__(self, max_sessions: int, sweep_seconds: float = 5.0) -> None:
        self.max_sessions = max_sessions
        self.sweep_seconds = sweep_seconds
        self._sessions: dict[str, Session] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._sweeper = Sweeper(self.sweep, sweep_seconds)

    async def start(self) -> None:
        self._sweeper.start()

    async def close(self) -> None:
        await self._sweeper.stop()

    async def ping(self) -> None:
        return None

    async def count(self) -> int:
        self.sweep()
        return len(self._sessions)

    # -- expiry --------------------------------------------------------------------------

    def sweep(self) -> int:
        """Drop expired sessions that nobody holds; returns how many went."""
        t = now()
        gone = [
            sid
            for sid, s in self._sessions.items()
            if s.expired(t) and not (sid in self._locks and self._locks[sid].locked())
        ]
        for sid in gone:
            self._drop(sid)
        return len(gone)

    def _drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        self._locks.pop(session_id, None)

    def _live(self, session_id: str) -> Session:
        s = self._sessions.get(session_id)
        if s is None:
            raise SessionNotFound(f"unknown or expired session {session_id!r}")
        if s.expired():
            lock = self._locks.get(session_id)
            if lock is None or not lock.locked():
                self._drop(session_id)
            raise SessionNotFound(f"unknown or expired session {session_id!r}")
        return s

    # -- the protocol ------------------------------------------------------------------------

    async def create(self, session: Session) -> Session:
        """Store it; a live session with the same (caller-chosen) id is replaced, not counted."""
        def full() -> bool:
            return session.session_id not in self._sessions and (
                len(self._sessions) >= self.max_sessions
            )

        if full():
            self.sweep()
        if full():
            soonest = min(s.expires_at for s in self._sessions.values())
            raise CapacityReached(
                retry_after=max(1, math.ceil(soonest - now())),
                detail=f"session capacity reached ({self.max_sessions} live sessions)",
            )
        session.touch(session.created_at)
        self._sessions[session.session_id] = session
        return replace(session)

    async def get(self, session_id: str) -> Session:
        s = self._live(session_id)
        s.touch()
        return replace(s)

    @contextlib.asynccontextmanager
    async def locked(self, session_id: str) -> AsyncIterator[Session]:
        self._live(session_id)
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        async with lock:
            current = self._live(session_id)  # it may have gone while we waited
            current.touch()
            work = replace(current, state=dict(current.state))
            yield work
            if self._sessions.get(session_id) is not current:
                raise SessionNotFound(f"session {session_id!r} was deleted meanwhile")
            work.touch()
            self._sessions[session_id] = work

    async def delete(self, session_id: str) -> None:
        self._live(session_id)
        self._drop(session_id)
