"""A session store shared by the worker processes of one host: a slot table in a mmap'd file.

Why: `python -m app` runs one uvicorn worker per core, and the kernel hands each connection
to any worker. Sessions kept in one process's memory would then be lost or forked; Redis
works but costs two network round trips per step. This store keeps every session in one
file that every worker maps (on /dev/shm when it has room, so it never touches a disk).

Layout: a header (geometry, live count, state layouts), three dense index columns (status,
64-bit key hash, expiry) and fixed-size records. An id maps to a record by linear probing
over the key hash; deletion is Knuth's algorithm R (later entries shift back), so there are
no tombstones and lookups stay short. Records hold the scalars, the state as float32 and
the last chunk's outputs inline; a larger last chunk (or internals) goes to a spill file
named by key and revision. State layouts (names, shapes) are written once into the header
and referenced by number, so any worker can rebuild a Session without the registry.

Concurrency: every table access holds one exclusive lock on the file (`fcntl.flock`,
released by the kernel if a worker dies; plus a thread lock for several stores in one
process) for a few microseconds, never across an await. A change is optimistic, as in the
Redis store: `locked()` reads the record and its revision, the caller computes, and the
write checks the revision under the lock, raising StoreConflict when another worker wrote
first (the data plane then runs the change again on the fresh session). Within a process
a per-session asyncio lock keeps one worker's own requests from conflicting.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import math
import mmap
import os
import pickle
import shutil
import struct
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from weakref import WeakValueDictionary

import numpy as np
import orjson

from app.errors import CapacityReached, SessionNotFound, StoreConflict, StoreUnavailable
from app.sessions.base import Session, now

log = logging.getLogger("peephole.sessions.shared")

MAGIC = b"PEEPSHM1"
HEADER = 65536  # geometry + count + layout table
_GEOMETRY = struct.Struct("<8sQQQQ")  # magic, slots, record size, state floats, output floats
_COUNT_AT = 64  # int64 live count
_LAYOUTS_AT = 128  # uint32 n, then n x (uint32 length, JSON)
# key, model, last digest, version, ttl, offset, created, expires, rev, last offset,
# last rows, last cols, layout, spilled
_RECORD = struct.Struct("<64s64s64sqqqddQqiiHB5x")
EMPTY, LIVE = 0, 1
_THREAD_LOCKS: dict[str, threading.Lock] = {}


def _key(session_id: str) -> bytes:
    """The record key: the id itself when short, else a digest (ids are matched by key)."""
    raw = session_id.encode()
    if len(raw) <= 64 and b"\0" not in raw and not raw.startswith(b"#"):
        return raw
    return b"#" + hashlib.blake2b(raw, digest_size=31).hexdigest().encode()


def _hash(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") | 1


def shared_dir(bytes_needed: int = 0) -> Path:
    """A fresh directory for a table: /dev/shm when it has room, else the temp directory."""
    shm = Path("/dev/shm")
    base = None
    if shm.is_dir() and os.access(shm, os.W_OK):
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize > 2 * bytes_needed:
            base = str(shm)
    return Path(tempfile.mkdtemp(prefix="peephole-sessions-", dir=base))


def table_bytes(max_sessions: int, state_floats: int, output_floats: int) -> int:
    slots = _slots(max_sessions)
    return HEADER + slots * (17 + _record_size(state_floats, output_floats))


def _slots(max_sessions: int) -> int:
    return 1 << max(10, math.ceil(math.log2(2 * max_sessions)))


def _record_size(state_floats: int, output_floats: int) -> int:
    return _RECORD.size + 4 * (state_floats + output_floats)


class SharedSessionStore:
    """The SessionStore protocol over a table file shared by processes (see module doc)."""

    def __init__(
        self,
        directory: Path | str | None,
        max_sessions: int,
        *,
        state_floats: int = 64,
        output_floats: int = 64,
        sweep_seconds: float = 5.0,
    ) -> None:
        self.max_sessions = max_sessions
        self.sweep_seconds = sweep_seconds
        self._owns_dir = directory is None
        need = table_bytes(max_sessions, state_floats, output_floats)
        self.dir = Path(directory) if directory is not None else shared_dir(need)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "sessions.table"
        self._tlock = _THREAD_LOCKS.setdefault(str(self.path), threading.Lock())
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        with self._mutex():
            if os.fstat(self._fd).st_size == 0:
                slots = _slots(max_sessions)
                rsize = _record_size(state_floats, output_floats)
                os.ftruncate(self._fd, HEADER + slots * (17 + rsize))
                os.pwrite(self._fd, _GEOMETRY.pack(MAGIC, slots, rsize, state_floats,
                                                   output_floats), 0)  # fmt: skip
            head = os.pread(self._fd, _GEOMETRY.size, 0)
        magic, slots, rsize, sf, of = _GEOMETRY.unpack(head)
        if magic != MAGIC:
            raise RuntimeError(f"{self.path} is not a Peephole session table")
        if sf < state_floats:
            raise RuntimeError(
                f"{self.path} holds {sf} state floats per session; need {state_floats}"
            )
        self.slots, self.mask, self.rsize = slots, slots - 1, rsize
        self.state_floats, self.output_floats = sf, of
        self._mm = mmap.mmap(self._fd, HEADER + slots * (17 + rsize))
        buf = memoryview(self._mm)
        at = HEADER
        self._status = np.frombuffer(buf, np.uint8, slots, at)
        at += slots
        self._hashes = np.frombuffer(buf, np.uint64, slots, at)
        at += 8 * slots
        self._expires = np.frombuffer(buf, np.float64, slots, at)
        at += 8 * slots
        self._records = at
        self._count = np.frombuffer(buf, np.int64, 1, _COUNT_AT)
        self._layouts: list[list[tuple[str, tuple[int, ...]]]] = []
        self._layout_ids: dict[bytes, int] = {}
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()
        self._sweeper: asyncio.Task[None] | None = None

    # -- locking and the table ---------------------------------------------------------------

    @contextlib.contextmanager
    def _mutex(self) -> Iterator[None]:
        """The table lock: across processes (fcntl) and across threads of this one."""
        with self._tlock:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except OSError as e:  # pragma: no cover - the file vanished or the fs refuses locks
                raise StoreUnavailable(f"session table lock failed: {e}") from e
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _rec(self, i: int) -> int:
        return self._records + i * self.rsize

    def _find(self, key: bytes, h: int) -> int:
        """The slot holding `key`, or -(free slot + 1) where it would go."""
        i = h & self.mask
        status, hashes = self._status, self._hashes
        while status[i]:
            if hashes[i] == h and self._mm[self._rec(i) : self._rec(i) + 64].rstrip(b"\0") == key:
                return i
            i = (i + 1) & self.mask
        return -i - 1

    def _remove(self, i: int) -> None:
        """Empty slot i and shift later entries of its probe run back (algorithm R)."""
        rec = self._rec(i)
        if self._mm[rec + _RECORD.size - 6]:  # spilled: drop the file
            self._unspill(i)
        j = i
        while True:
            j = (j + 1) & self.mask
            if not self._status[j]:
                break
            home = int(self._hashes[j]) & self.mask
            if (i <= j and i < home <= j) or (i > j and (home > i or home <= j)):
                continue
            self._status[i], self._hashes[i], self._expires[i] = (
                self._status[j], self._hashes[j], self._expires[j],
            )  # fmt: skip
            self._mm[self._rec(i) : self._rec(i) + self.rsize] = self._mm[
                self._rec(j) : self._rec(j) + self.rsize
            ]
            i = j
        self._status[i] = EMPTY
        self._hashes[i] = 0
        self._count[0] -= 1

    def _live(self, session_id: str) -> tuple[int, bytes]:
        """(slot, key) of a live session; expired ones are removed. Call under the lock."""
        key = _key(session_id)
        i = self._find(key, _hash(key))
        if i < 0:
            raise SessionNotFound(f"unknown or expired session {session_id!r}")
        if self._expires[i] <= now():
            self._remove(i)
            raise SessionNotFound(f"unknown or expired session {session_id!r}")
        return i, key

    # -- layouts -------------------------------------------------------------------------------

    def _sync_layouts(self) -> None:
        (n,) = struct.unpack_from("<I", self._mm, _LAYOUTS_AT)
        at = _LAYOUTS_AT + 4 + sum(4 + len(b) for b in self._layout_ids)
        while len(self._layouts) < n:
            (size,) = struct.unpack_from("<I", self._mm, at)
            raw = bytes(self._mm[at + 4 : at + 4 + size])
            self._layout_ids[raw] = len(self._layouts)
            self._layouts.append([(name, tuple(shape)) for name, shape in orjson.loads(raw)])
            at += 4 + size

    def _layout_id(self, state: dict[str, np.ndarray]) -> int:
        raw = orjson.dumps([[k, list(v.shape)] for k, v in state.items()])
        found = self._layout_ids.get(raw)
        if found is not None:
            return found
        self._sync_layouts()
        if raw in self._layout_ids:
            return self._layout_ids[raw]
        at = _LAYOUTS_AT + 4 + sum(4 + len(b) for b in self._layout_ids)
        if at + 4 + len(raw) > HEADER:
            raise StoreUnavailable("session table: too many distinct state layouts")
        struct.pack_into("<I", self._mm, at, len(raw))
        self._mm[at + 4 : at + 4 + len(raw)] = raw
        struct.pack_into("<I", self._mm, _LAYOUTS_AT, len(self._layouts) + 1)
        self._sync_layouts()
        return self._layout_ids[raw]

    # -- records -------------------------------------------------------------------------------

    def _spill_path(self, key: bytes, rev: int) -> Path:
        return self.dir / f"spill-{hashlib.blake2b(key, digest_size=12).hexdigest()}-{rev}"

    def _unspill(self, i: int) -> None:
        rec = self._rec(i)
        key = bytes(self._mm[rec : rec + 64]).rstrip(b"\0")
        rev = _RECORD.unpack_from(self._mm, rec)[8]
        with contextlib.suppress(FileNotFoundError):
            self._spill_path(key, rev).unlink()

    def _read(self, i: int, session_id: str) -> tuple[Session, int]:
        rec = self._rec(i)
        (key, model, digest, version, ttl, offset, created, expires, rev, last_offset, rows,
         cols, layout, spilled) = _RECORD.unpack_from(self._mm, rec)  # fmt: skip
        if layout >= len(self._layouts):
            self._sync_layouts()
        floats = rec + _RECORD.size
        state: dict[str, np.ndarray] = {}
        for name, shape in self._layouts[layout]:
            n = math.prod(shape)
            state[name] = np.frombuffer(self._mm, np.float32, n, floats).reshape(shape).copy()
            floats += 4 * n
        s = Session(
            session_id=session_id, model=model.rstrip(b"\0").decode(), version=version,
            ttl_seconds=ttl, state=state, offset=offset, created_at=created, expires_at=expires,
        )  # fmt: skip
        if rows >= 0:
            s.last_offset = last_offset
            s.last_digest = digest.rstrip(b"\0").decode()
            if spilled:
                try:
                    s.last_outputs, s.last_internals = pickle.loads(
                        self._spill_path(key.rstrip(b"\0"), rev).read_bytes()
                    )
                except FileNotFoundError:  # pragma: no cover - removed by hand
                    s.forget_last_chunk()
            else:
                out = rec + _RECORD.size + 4 * self.state_floats
                s.last_outputs = (
                    np.frombuffer(self._mm, np.float32, rows * cols, out).reshape(rows, cols).copy()
                )
        return s, rev

    def _write(self, i: int, key: bytes, s: Session, rev: int) -> None:
        rec = self._rec(i)
        layout = self._layout_id(s.state)
        flat = [np.ascontiguousarray(v, np.float32).ravel() for v in s.state.values()]
        n = sum(a.size for a in flat)
        if n > self.state_floats:
            raise StoreUnavailable(f"a state of {n} floats does not fit the session table")
        rows = cols = -1
        spilled = 0
        if s.last_outputs is not None:
            out = np.ascontiguousarray(s.last_outputs, np.float32)
            rows, cols = out.shape
            if out.size <= self.output_floats and s.last_internals is None:
                at = rec + _RECORD.size + 4 * self.state_floats
                self._mm[at : at + 4 * out.size] = out.tobytes()
            else:
                spilled = 1
                self._spill_path(key, rev).write_bytes(
                    pickle.dumps((out, s.last_internals), protocol=5)
                )
        _RECORD.pack_into(
            self._mm, rec, key, s.model.encode(), (s.last_digest or "").encode(), s.version,
            s.ttl_seconds, s.offset, s.created_at, s.expires_at, rev,
            -1 if s.last_offset is None else s.last_offset, rows, cols, layout, spilled,
        )  # fmt: skip
        at = rec + _RECORD.size
        for a in flat:
            self._mm[at : at + 4 * a.size] = a.tobytes()
            at += 4 * a.size
        self._status[i] = LIVE
        self._hashes[i] = _hash(key)
        self._expires[i] = s.expires_at

    def _set_expiry(self, i: int, at: float) -> None:
        self._expires[i] = at
        struct.pack_into("<d", self._mm, self._rec(i) + 192 + 32, at)

    # -- the protocol --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="session-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def ping(self) -> None:
        return None

    def sweep(self) -> int:
        """Remove expired sessions (any worker may do it); returns how many went."""
        with self._mutex():
            gone = 0
            t = now()
            while True:
                expired = np.nonzero((self._status == LIVE) & (self._expires <= t))[0]
                if not len(expired):
                    return gone
                self._remove(int(expired[0]))  # shifting may move the others: look again
                gone += 1

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_seconds)
            try:
                self.sweep()
            except Exception:  # never let the sweeper die
                log.exception("session sweep failed")

    async def count(self) -> int:
        self.sweep()
        return int(self._count[0])

    async def create(self, session: Session) -> Session:
        """Store it; a live session with the same (caller-chosen) id is replaced, not counted."""
        key = _key(session.session_id)
        h = _hash(key)
        session.touch(session.created_at)
        for attempt in (0, 1):
            with self._mutex():
                i = self._find(key, h)
                if i >= 0:
                    _, rev = self._read(i, session.session_id)
                    if self._mm[self._rec(i) + _RECORD.size - 6]:
                        self._unspill(i)
                    self._write(i, key, session, rev + 1)
                    return _copy(session)
                if self._count[0] < self.max_sessions:
                    self._write(-i - 1, key, session, 0)
                    self._count[0] += 1
                    return _copy(session)
                if attempt:
                    live = self._expires[self._status == LIVE]
                    soonest = float(live.min()) if len(live) else now() + 1
                    raise CapacityReached(
                        retry_after=max(1, math.ceil(soonest - now())),
                        detail=f"session capacity reached ({self.max_sessions} live sessions)",
                    )
            self.sweep()
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, session_id: str) -> Session:
        with self._mutex():
            i, _ = self._live(session_id)
            s, _ = self._read(i, session_id)
            s.touch()
            self._set_expiry(i, s.expires_at)
        return s

    @contextlib.asynccontextmanager
    async def locked(self, session_id: str) -> AsyncIterator[Session]:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        async with lock:
            with self._mutex():
                i, key = self._live(session_id)
                work, rev = self._read(i, session_id)
                work.touch()
                self._set_expiry(i, work.expires_at)
            yield work
            with self._mutex():
                i = self._find(key, _hash(key))
                if i < 0:
                    raise SessionNotFound(f"session {session_id!r} was deleted meanwhile")
                current = _RECORD.unpack_from(self._mm, self._rec(i))[8]
                if current != rev:
                    raise StoreConflict()
                old_spilled = self._mm[self._rec(i) + _RECORD.size - 6]
                if old_spilled:
                    self._unspill(i)
                work.touch()
                self._write(i, key, work, rev + 1)

    async def delete(self, session_id: str) -> None:
        with self._mutex():
            i, _ = self._live(session_id)
            self._remove(i)


def _copy(s: Session) -> Session:
    return replace(s, state={k: np.array(v, np.float32) for k, v in s.state.items()})
