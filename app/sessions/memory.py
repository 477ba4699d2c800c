"""The in-process session store: a dict, one asyncio lock per session, an expiry heap.

Only for a single process (one worker): PEEPHOLE_SESSION_STORE=lmdb shares sessions between
the workers of one host, redis between replicas.

Expiry and capacity never look at every session: a heap of (expires_at, id) entries, one
pushed per touch, gives the soonest expiry and the expired ones in O(log n). An entry whose
session has been touched since (or is gone) is stale and skipped when it comes up; the heap
is rebuilt from the live sessions when stale entries outnumber them, which keeps its size
within about twice the live count at an amortised O(1) per touch.
"""

from __future__ import annotations

import contextlib
import heapq
import math
from collections.abc import AsyncIterator
from dataclasses import replace

from app.errors import CapacityReached, SessionNotFound
from app.sessions.base import KeyedLocks, Session, Sweeper, now


class MemorySessionStore:
    """Sessions in a dict; expiry checked on every access and swept in batches."""

    def __init__(self, max_sessions: int, sweep_seconds: float = 5.0) -> None:
        self.max_sessions = max_sessions
        self.sweep_seconds = sweep_seconds
        self._sessions: dict[str, Session] = {}
        self._locks = KeyedLocks()
        self._heap: list[tuple[float, str]] = []
        self._sweeper = Sweeper(self.sweep, sweep_seconds)

    async def start(self) -> None:
        self._sweeper.start()

    async def close(self) -> None:
        await self._sweeper.stop()

    async def ping(self) -> None:
        return None

    async def count(self) -> int:
        await self._sweeper.sweep_all()
        return len(self._sessions)

    def count_pinned(self, model: str, version: int) -> int:
        """Live sessions pinned to model/version: model control frees a draining version as
        soon as none is left (a store that cannot tell has no such method: the deadline)."""
        t = now()
        return sum(
            1
            for s in self._sessions.values()
            if s.version == version and s.model == model and not s.expired(t)
        )

    # -- expiry --------------------------------------------------------------------------

    def _put(self, s: Session) -> None:
        """Store `s` and index its expiry."""
        self._sessions[s.session_id] = s
        heapq.heappush(self._heap, (s.expires_at, s.session_id))
        if len(self._heap) > 2 * len(self._sessions) + 1024:
            self._heap = [(v.expires_at, k) for k, v in self._sessions.items()]
            heapq.heapify(self._heap)

    def _soonest(self) -> tuple[float, str] | None:
        """The heap's first entry that is current (stale ones are dropped on the way)."""
        heap = self._heap
        while heap:
            at, sid = heap[0]
            s = self._sessions.get(sid)
            if s is not None and s.expires_at == at:
                return heap[0]
            heapq.heappop(heap)
        return None

    def sweep(self, limit: int = 1 << 62) -> int:
        """Drop up to `limit` expired sessions that nobody holds; returns how many went.

        A held session's entry is dropped too: the holder pushes a new one when it leaves."""
        t = now()
        gone = 0
        while gone < limit:
            first = self._soonest()
            if first is None or first[0] > t:
                break
            heapq.heappop(self._heap)
            if first[1] not in self._locks:
                del self._sessions[first[1]]
                gone += 1
        return gone

    def _live(self, session_id: str) -> Session:
        s = self._sessions.get(session_id)
        if s is None:
            raise SessionNotFound(f"unknown or expired session {session_id!r}")
        if s.expired():
            if session_id not in self._locks:
                del self._sessions[session_id]
            raise SessionNotFound(f"unknown or expired session {session_id!r}")
        return s

    # -- the protocol ------------------------------------------------------------------------

    async def create(self, session: Session) -> Session:
        """Store it; a live session with the same (caller-chosen) id is replaced, not counted."""
        sid = session.session_id
        if sid not in self._sessions and len(self._sessions) >= self.max_sessions:
            self.sweep(1)  # one expired session makes the room needed
            if len(self._sessions) >= self.max_sessions:
                first = self._soonest()
                soonest = first[0] if first is not None else now() + 1
                raise CapacityReached(
                    retry_after=max(1, math.ceil(soonest - now())),
                    detail=f"session capacity reached ({self.max_sessions} live sessions)",
                )
        session.touch(session.created_at)
        self._put(_copy(session))
        return replace(session)

    async def get(self, session_id: str) -> Session:
        s = self._live(session_id)
        s.touch()
        self._put(s)
        return _copy(s)

    @contextlib.asynccontextmanager
    async def locked(self, session_id: str) -> AsyncIterator[Session]:
        self._live(session_id)
        await self._locks.acquire(session_id)  # held or awaited: never swept meanwhile
        try:
            current = self._live(session_id)  # it may have gone while we waited
            work = _copy(current)
            try:
                yield work
            except BaseException:
                if self._sessions.get(session_id) is current:
                    current.touch()  # a refused change is still a use of the session
                    self._put(current)
                raise
            if self._sessions.get(session_id) is not current:
                raise SessionNotFound(f"session {session_id!r} was deleted meanwhile")
            work.touch()
            self._put(work)
        finally:
            self._locks.release(session_id)

    async def delete(self, session_id: str) -> None:
        self._live(session_id)
        del self._sessions[session_id]


def _copy(s: Session) -> Session:
    """A copy whose arrays are its own: what a caller does to it never reaches the store.
    (Field by field: `dataclasses.replace` runs __init__ and costs several times more.)"""
    c = object.__new__(Session)
    c.__dict__.update(s.__dict__)
    c.state = {k: v.copy() for k, v in s.state.items()}
    return c
