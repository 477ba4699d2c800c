"""The in-process session store: columnar tables, an id index, one asyncio lock per session.

Only for a single process (one worker): PEEPHOLE_SESSION_STORE=lmdb shares sessions between
the workers of one host, redis between replicas.

A session costs its state, not Python objects: sessions live in one `SessionTable` per layout
(model version and state shapes; app/sessions/table.py) as rows of numpy columns, and the
index maps each id to its row. Ids are keyed compactly: the 32-hex-character ids the service
makes (uuid4().hex) by their 16 bytes, any other id (a client's, a /v2 sequence's) by itself,
so the two never collide. mackey-glass/1 (128 bytes of state) costs about 400 bytes a session
in all; docs/PERFORMANCE.md has the breakdown and `python bench/million.py` measures it.

Expiry and capacity never look at every session: each table's heap gives its soonest expiry
and its expired rows in O(log n) (table.py explains why a touch costs no heap entry).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Hashable
from types import TracebackType

from app.errors import CapacityReached, SessionNotFound
from app.sessions.base import KeyedLocks, Session, Sweeper, now
from app.sessions.table import Layout, RowState, SessionTable, hex_bytes, layout_of

_ROW, _TABLE = (1 << 32) - 1, (1 << 16) - 1


def index_key(session_id: str) -> Hashable:
    """An id's key in the index: the 16 bytes of a lowercase 32-hex-character id, else the id
    (bytes and str keys never compare equal, so the map stays one-to-one)."""
    if len(session_id) == 32:
        raw = hex_bytes(session_id)
        if raw is not None:
            return raw
    return session_id


def _settle(work: Session, state: object, ours: bool) -> None:
    """Give `work` a state of its own if it still has its row's (the row is not its own once
    the lock goes, or is another session's already when `ours` is False)."""
    if work.state is state and isinstance(state, RowState):
        work.state = state.detach() if ours else dict(state.copies or {})


def _gone(session_id: str) -> SessionNotFound:
    return SessionNotFound(f"unknown or expired session {session_id!r}")


class _Locked:
    """`MemorySessionStore.locked(id)`: the session's working copy, written back when the block
    exits normally. A class rather than `@asynccontextmanager`: an async generator costs
    contextlib's layers and asyncio's tracking of generators, on every step."""

    __slots__ = ("store", "session_id", "key", "handle", "table", "row", "work", "state", "ttl")

    def __init__(self, store: MemorySessionStore, session_id: str) -> None:
        self.store, self.session_id = store, session_id

    async def __aenter__(self) -> Session:
        store, session_id = self.store, self.session_id
        key = self.key = index_key(session_id)
        handle, table, row = store._live(key, session_id)
        if not store._locks.take(key):  # (held or awaited: never swept meanwhile)
            await store._locks.acquire(key)
            try:  # it may have gone while we waited
                handle, table, row = store._live(key, session_id)
            except SessionNotFound:
                store._locks.release(key)
                raise
        try:
            work = table.read(row, session_id, lazy=True)
        except BaseException:
            store._locks.release(key)
            raise
        self.handle, self.table, self.row, self.work = handle, table, row, work
        self.state, self.ttl = work.state, work.ttl_seconds
        return work

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:  # fmt: skip
        store, key, table, row, work = self.store, self.key, self.table, self.row, self.work
        try:
            ours = store._index.get(key) == self.handle
            if kind is not None:  # refused: nothing written
                _settle(work, self.state, ours)
                if ours:
                    table.extend(row, now() + self.ttl)  # a refused change is still a use of it
                return
            if not ours:
                _settle(work, self.state, False)
                raise SessionNotFound(f"session {self.session_id!r} was deleted meanwhile")
            work.expires_at = now() + work.ttl_seconds
            if table.write(row, work):
                table.extend(row, work.expires_at)
                _settle(work, self.state, True)
            else:  # another model or state layout: the session moves to that table
                _settle(work, self.state, True)
                store._remove(key, self.handle)
                store._add(key, work)
        finally:
            store._locks.release(key)


class MemorySessionStore:
    """Sessions in columnar tables; expiry checked on every access and swept in batches."""

    def __init__(self, max_sessions: int, sweep_seconds: float = 5.0) -> None:
        self.max_sessions = max_sessions
        self.sweep_seconds = sweep_seconds
        # key -> handle: serial << 48 | table number << 32 | row. The serial (one per create)
        # makes every session's handle its own, so a handle that is still in the index after
        # an await is the same session (not one created since in the same row).
        self._index: dict[Hashable, int] = {}
        self._serial = 0
        self._tables: list[SessionTable] = []
        self._by_layout: dict[tuple[str, int, Layout], int] = {}  # -> table number
        self._epoch = now()
        self._locks = KeyedLocks()
        self._sweeper = Sweeper(self.sweep, sweep_seconds)

    async def start(self) -> None:
        self._sweeper.start()

    async def close(self) -> None:
        await self._sweeper.stop()

    async def ping(self) -> None:
        return None

    async def count(self) -> int:
        await self._sweeper.sweep_all()
        return len(self._index)

    def count_pinned(self, model: str, version: int) -> int:
        """Live sessions pinned to model/version: model control frees a draining version as
        soon as none is left (a store that cannot tell has no such method: the deadline)."""
        t = now()
        return sum(table.count_live(t) for table in self._tables
                   if table.version == version and table.model == model)  # fmt: skip

    # -- tables and rows -------------------------------------------------------------------------

    def _table_for(self, s: Session) -> int:
        layout = layout_of(s)
        n = self._by_layout.get((s.model, s.version, layout))
        if n is None:
            n = self._by_layout[(s.model, s.version, layout)] = len(self._tables)
            self._tables.append(SessionTable(s.model, s.version, layout, self._epoch))
        return n

    def _add(self, key: Hashable, s: Session) -> None:
        n = self._table_for(s)
        row = self._tables[n].add(key, s)
        assert row is not None  # (the table of its layout)
        self._serial += 1
        self._index[key] = self._serial << 48 | n << 32 | row

    def _remove(self, key: Hashable, handle: int) -> None:
        del self._index[key]
        self._tables[handle >> 32 & _TABLE].remove(handle & _ROW)

    def _live(self, key: Hashable, session_id: str) -> tuple[int, SessionTable, int]:
        """The session's (handle, table, row); SessionNotFound if it is unknown or expired (and
        then dropped, unless someone holds or awaits its lock)."""
        handle = self._index.get(key)
        if handle is None:
            raise _gone(session_id)
        table, row = self._tables[handle >> 32 & _TABLE], handle & _ROW
        if table.expires[row] <= now():
            if key not in self._locks:
                self._remove(key, handle)
            else:  # the sweep may have dropped its entry; the next one must find it
                table.index(row)
            raise _gone(session_id)
        return handle, table, row

    def sweep(self, limit: int = 1 << 62) -> int:
        """Drop up to `limit` expired sessions that nobody holds; returns how many went.

        A held session's entry is dropped too: its holder's write-back indexes it again."""
        t = now()
        gone = 0
        for table in self._tables:
            while gone < limit:
                row = table.pop_expired(t)
                if row is None:
                    break
                key = table.key(row)
                if key is not None and key not in self._locks:
                    del self._index[key]
                    table.remove(row)
                    gone += 1
        return gone

    def _soonest(self) -> float:
        found = [t for t in (table.soonest() for table in self._tables) if t is not None]
        return min(found) if found else now() + 1

    # -- the protocol ----------------------------------------------------------------------------

    async def create(self, session: Session) -> Session:
        """Store it; a live session with the same (caller-chosen) id is replaced, not counted."""
        key = index_key(session.session_id)
        old = self._index.get(key)
        if old is None and len(self._index) >= self.max_sessions:
            self.sweep(1)  # one expired session makes the room needed
            if len(self._index) >= self.max_sessions:
                raise CapacityReached(
                    retry_after=max(1, math.ceil(self._soonest() - now())),
                    detail=f"session capacity reached ({self.max_sessions} live sessions)",
                )
        session.touch(session.created_at)
        if old is not None:
            self._remove(key, old)
        self._add(key, session)
        return session

    async def create_if_absent(self, session: Session) -> tuple[Session, bool]:
        """(`session`, True) stored, or (the live session with its id, as `get` gives it,
        False): no await between the look and the create, so nothing comes in between."""
        if index_key(session.session_id) in self._index:
            with contextlib.suppress(SessionNotFound):  # (expired: it is absent)
                return await self.get(session.session_id), False
        return await self.create(session), True

    async def get(self, session_id: str) -> Session:
        _, table, row = self._live(index_key(session_id), session_id)
        s = table.read(row, session_id)
        s.expires_at = now() + s.ttl_seconds
        table.extend(row, s.expires_at)
        return s

    def locked(self, session_id: str) -> _Locked:
        return _Locked(self, session_id)

    async def delete(self, session_id: str) -> None:
        key = index_key(session_id)
        self._remove(key, self._live(key, session_id)[0])

    # -- what it costs ---------------------------------------------------------------------------

    def footprint(self) -> dict[str, int]:
        """Bytes held, by part: the tables' columns and heaps, and the index (its hash table,
        keys and handles). A Python walk over every key: for benchmarks, not for serving."""
        import sys

        parts: dict[str, int] = {}
        for table in self._tables:
            for part, n in table.footprint().items():
                parts[part] = parts.get(part, 0) + n
        parts["index"] = sys.getsizeof(self._index) + sum(
            sys.getsizeof(k) + sys.getsizeof(h) for k, h in self._index.items()
        )
        return parts
