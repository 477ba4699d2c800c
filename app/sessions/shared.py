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
import socket
import struct
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from app.errors import CapacityReached, SessionNotFound, StoreConflict, StoreUnavailable
from app.sessions.base import Session, Sweeper, now

log = logging.getLogger("peephole.sessions.shared")

MAGIC = b"PEEPSHM1"
HEADER = 65536  # geometry + count + layout table
_GEOMETRY = struct.Struct("<8sQQQQ")  # magic, slots, record size, state floats, output floats
_COUNT_AT = 64  # int64 live count
_LAYOUTS_AT = 128  # uint32 n, then n x (uint32 length, JSON)
# key, model, last digest, version, ttl, offset, created, expires, rev, last offset,
# last rows, last cols, layout, spilled
# ... last rows, last cols, layout, spilled, pad, lease owner pid, lease deadline
_RECORD = struct.Struct("<64s64s64sqqqddQqiiHBxId")
_TTL_AT, _EXPIRES_AT, _REV_AT, _SPILLED_AT = 200, 224, 232, 258  # byte offsets in a record
_LEASE = struct.Struct("<Id")
_LEASE_AT = 260
_WAITED_AT = 259  # set by a worker waiting for the lease: wake it when the lease goes
_WAIT_FALLBACK = 0.005  # a waiter looks again after this long even without a wake-up
LEASE_SECONDS = 60.0  # a lease older than this is void whoever holds it
EMPTY, LIVE = 0, 1
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_CACHE = 65536  # ids whose key and hash are remembered (cleared when full)
_KEYS: dict[str, bytes] = {}
_HASHES: dict[bytes, int] = {}


def _key(session_id: str) -> bytes:
    """The record key: the id itself when short, else a digest (ids are matched by key)."""
    found = _KEYS.get(session_id)
    if found is not None:
        return found
    raw = session_id.encode()
    if len(raw) > 64 or b"\0" in raw or raw.startswith(b"#"):
        raw = b"#" + hashlib.blake2b(raw, digest_size=31).hexdigest().encode()
    if len(_KEYS) >= _CACHE:
        _KEYS.clear()
    _KEYS[session_id] = raw
    return raw


def _hash(key: bytes) -> int:
    """64-bit hash of a key (odd, so never the empty slot's 0); cached like keys."""
    found = _HASHES.get(key)
    if found is not None:
        return found
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") | 1
    if len(_HASHES) >= _CACHE:
        _HASHES.clear()
    _HASHES[key] = h
    return h


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
        self._layout_of: dict[tuple[tuple[str, tuple[int, ...]], ...], int] = {}
        self._locks: dict[str, list[Any]] = {}  # id -> [asyncio.Lock, users]
        self._sweeper = Sweeper(self.sweep, sweep_seconds)
        self._pid = os.getpid()
        self._notify: socket.socket | None = None
        self._sender: socket.socket | None = None
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}

    # -- locking and the table ---------------------------------------------------------------

    def _lock(self) -> None:
        """The table lock: across processes (flock) and across threads of this one."""
        self._tlock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError as e:  # pragma: no cover - the file vanished or the fs refuses locks
            self._tlock.release()
            raise StoreUnavailable(f"session table lock failed: {e}") from e

    def _unlock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._tlock.release()

    @contextlib.contextmanager
    def _mutex(self) -> Iterator[None]:
        self._lock()
        try:
            yield
        finally:
            self._unlock()

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
        """The number of this state layout (names, shapes); new ones are added under the lock."""
        shapes = tuple((k, v.shape) for k, v in state.items())
        found = self._layout_of.get(shapes)
        if found is not None:
            return found
        raw = orjson.dumps([[k, list(v.shape)] for k, v in state.items()])
        with self._mutex():
            self._sync_layouts()
            if raw not in self._layout_ids:
                at = _LAYOUTS_AT + 4 + sum(4 + len(b) for b in self._layout_ids)
                if at + 4 + len(raw) > HEADER:
                    raise StoreUnavailable("session table: too many distinct state layouts")
                struct.pack_into("<I", self._mm, at, len(raw))
                self._mm[at + 4 : at + 4 + len(raw)] = raw
                # the count last: a reader without the lock never sees a half-written entry
                struct.pack_into("<I", self._mm, _LAYOUTS_AT, len(self._layouts) + 1)
                self._sync_layouts()
        self._layout_of[shapes] = self._layout_ids[raw]
        return self._layout_ids[raw]

    # -- records -------------------------------------------------------------------------------

    def _spill_path(self, key: bytes, rev: int) -> Path:
        return self.dir / f"spill-{hashlib.blake2b(key, digest_size=12).hexdigest()}-{rev}"

    def _unspill(self, i: int) -> None:
        """Drop slot i's spill file, if it has one."""
        rec = self._rec(i)
        if self._mm[rec + _SPILLED_AT]:
            key = bytes(self._mm[rec : rec + 64]).rstrip(b"\0")
            (rev,) = struct.unpack_from("<Q", self._mm, rec + _REV_AT)
            with contextlib.suppress(FileNotFoundError):
                self._spill_path(key, rev).unlink()

    def _snapshot(self, i: int) -> bytes:
        """Under the lock: touch slot i's session and copy its record (one memcpy)."""
        rec = self._records + i * self.rsize
        (ttl,) = struct.unpack_from("<q", self._mm, rec + _TTL_AT)
        expires = now() + ttl
        self._expires[i] = expires
        struct.pack_into("<d", self._mm, rec + _EXPIRES_AT, expires)
        return self._mm[rec : rec + self.rsize]

    def _parse(self, raw: bytes, session_id: str) -> tuple[Session, int]:
        """A Session from a record copy (outside the lock)."""
        (key, model, digest, version, ttl, offset, created, expires, rev, last_offset, rows,
         cols, layout, spilled, _, _) = _RECORD.unpack_from(raw)  # fmt: skip
        if layout >= len(self._layouts):
            self._sync_layouts()
        floats = np.frombuffer(raw, np.float32, self.state_floats + self.output_floats,
                               _RECORD.size).copy()  # fmt: skip
        state: dict[str, np.ndarray] = {}
        at = 0
        for name, shape in self._layouts[layout]:
            n = math.prod(shape)
            state[name] = floats[at : at + n].reshape(shape)
            at += n
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
                except FileNotFoundError:  # pragma: no cover - removed meanwhile
                    s.forget_last_chunk()
            else:
                out = self.state_floats
                s.last_outputs = floats[out : out + rows * cols].reshape(rows, cols)
        return s, rev

    def _pack(self, key: bytes, s: Session, rev: int, last: bool = True) -> tuple[bytearray, bool]:
        """A record for `s` at revision `rev` (outside the lock); (record, spilled).

        A last chunk too big for the record (or with internals) goes to a spill file named by
        key and revision, written here: a record never points at a file being written.
        """
        layout = self._layout_id(s.state)
        buf = bytearray(self.rsize)
        floats = np.frombuffer(buf, np.float32, self.state_floats + self.output_floats,
                               _RECORD.size)  # fmt: skip
        at = 0
        for v in s.state.values():
            n = v.size
            if at + n > self.state_floats:
                raise StoreUnavailable(f"a state of {at + n}+ floats does not fit the table")
            floats[at : at + n] = v.ravel()
            at += n
        rows = cols = -1
        spilled = False
        if last and s.last_outputs is not None:
            out = np.asarray(s.last_outputs, np.float32)
            rows, cols = out.shape
            if out.size <= self.output_floats and s.last_internals is None:
                floats[self.state_floats : self.state_floats + out.size] = out.ravel()
            else:
                spilled = True
                self._spill_path(key, rev).write_bytes(
                    pickle.dumps((out, s.last_internals), protocol=5)
                )
        _RECORD.pack_into(
            buf, 0, key, s.model.encode(), (s.last_digest or "").encode() if last else b"",
            s.version, s.ttl_seconds, s.offset, s.created_at, s.expires_at, rev,
            -1 if not last or s.last_offset is None else s.last_offset, rows, cols, layout,
            spilled, 0, 0.0,
        )  # fmt: skip
        return buf, spilled

    def _put(self, i: int, key: bytes, buf: bytes | bytearray, expires: float) -> None:
        """Under the lock: write a packed record into slot i and index it."""
        rec = self._rec(i)
        self._mm[rec : rec + self.rsize] = buf
        self._status[i] = LIVE
        self._hashes[i] = _hash(key)
        self._expires[i] = expires

    # -- the protocol --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._notify is None:
            self._open_notify()
        self._sweeper.start()

    async def close(self) -> None:
        await self._sweeper.stop()
        if self._notify is not None:
            asyncio.get_running_loop().remove_reader(self._notify.fileno())
            self._notify.close()
            self._notify = None
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f"notify-{self._pid}").unlink()
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

    async def count(self) -> int:
        self.sweep()
        return int(self._count[0])

    async def create(self, session: Session) -> Session:
        """Store it; a live session with the same (caller-chosen) id is replaced, not counted."""
        key = _key(session.session_id)
        h = _hash(key)
        session.touch(session.created_at)
        buf, _ = self._pack(key, session, 0, last=False)
        for attempt in (0, 1):
            with self._mutex():
                i = self._find(key, h)
                if i >= 0:
                    self._unspill(i)
                    (rev,) = struct.unpack_from("<Q", self._mm, self._rec(i) + _REV_AT)
                    struct.pack_into("<Q", buf, _REV_AT, rev + 1)
                    self._put(i, key, buf, session.expires_at)
                    return _copy(session)
                if self._count[0] < self.max_sessions:
                    self._put(-i - 1, key, buf, session.expires_at)
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
        self._lock()
        try:
            raw = self._snapshot(self._live(session_id)[0])
        finally:
            self._unlock()
        return self._parse(raw, session_id)[0]

    def _try_lease(self, session_id: str) -> tuple[bytes, bytes] | None:
        """Under the lock: take the session's lease and snapshot it, or None if another live
        worker holds it. A lease is void past its deadline or when its holder is dead."""
        i, key = self._live(session_id)
        rec = self._rec(i)
        owner, until = _LEASE.unpack_from(self._mm, rec + _LEASE_AT)
        t = now()
        if owner and owner != self._pid and until > t and _alive(owner):
            self._mm[rec + _WAITED_AT] = 1
            return None
        _LEASE.pack_into(self._mm, rec + _LEASE_AT, self._pid, t + LEASE_SECONDS)
        return key, self._snapshot(i)

    def _release(self, key: bytes, rev: int) -> None:
        """Give the lease back after a block that raised (nothing is written)."""
        waited = False
        self._lock()
        try:
            i = self._find(key, _hash(key))
            if i >= 0:
                rec = self._rec(i)
                (current,) = struct.unpack_from("<Q", self._mm, rec + _REV_AT)
                owner, _ = _LEASE.unpack_from(self._mm, rec + _LEASE_AT)
                if current == rev and owner == self._pid:
                    _LEASE.pack_into(self._mm, rec + _LEASE_AT, 0, 0.0)
                    waited = bool(self._mm[rec + _WAITED_AT])
                    self._mm[rec + _WAITED_AT] = 0
        finally:
            self._unlock()
        if waited:
            self._wake_others(key)

    # -- wake-ups between workers ------------------------------------------------------------
    # Each worker binds a datagram socket `notify-<pid>` in the table's directory. A worker
    # that finds a session leased by another marks the record and waits on a future; the
    # holder, when it writes or releases a marked record, sends the key's hash to the other
    # workers, whose readers resolve the futures. A lost datagram costs one fallback timer.

    def _open_notify(self) -> None:
        path = self.dir / f"notify-{self._pid}"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.setblocking(False)
        self._notify = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_notify)

    def _on_notify(self) -> None:
        while True:
            try:
                data = self._notify.recv(64)  # type: ignore[union-attr]
            except (BlockingIOError, OSError):
                return
            for fut in self._waiters.pop(data, ()):
                if not fut.done():
                    fut.set_result(None)

    def _wake_others(self, key: bytes) -> None:
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        mine = f"notify-{self._pid}"
        for name in os.listdir(self.dir):
            if name.startswith("notify-") and name != mine:
                with contextlib.suppress(OSError):  # gone or full: its fallback timer covers it
                    self._sender.sendto(key, str(self.dir / name))

    async def _wait_for_lease(self, key: bytes) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.setdefault(key, []).append(fut)
        timer = loop.call_later(_WAIT_FALLBACK, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            timer.cancel()
            waiting = self._waiters.get(key)
            if waiting is not None and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._waiters[key]

    @contextlib.asynccontextmanager
    async def locked(self, session_id: str) -> AsyncIterator[Session]:
        """Exclusive across workers too: a lease in the record (pid, deadline) makes other
        workers wait for the holder instead of computing a change that would conflict; the
        revision check on write stays as the safety net (a void lease taken over)."""
        entry = self._locks.get(session_id)
        if entry is None:
            entry = self._locks[session_id] = [asyncio.Lock(), 0]
        entry[1] += 1  # users of this lock: it is dropped when the last one leaves
        try:
            async with entry[0]:
                while True:
                    self._lock()
                    try:
                        got = self._try_lease(session_id)
                    finally:
                        self._unlock()
                    if got is not None:
                        break
                    # Another worker is mid-change (usually well under a millisecond): wait for
                    # its wake-up rather than compute a change that would conflict.
                    await self._wait_for_lease(_key(session_id))
                key, raw = got
                work, rev = self._parse(raw, session_id)
                try:
                    yield work
                except BaseException:
                    self._release(key, rev)
                    raise
                work.touch()
                buf, spilled = self._pack(key, work, rev + 1)  # the lease is cleared in `buf`
                old_spill = waited = False
                self._lock()
                try:
                    i = self._find(key, _hash(key))
                    if i < 0:
                        error: Exception | None = SessionNotFound(
                            f"session {session_id!r} was deleted meanwhile"
                        )
                    else:
                        rec = self._rec(i)
                        (current,) = struct.unpack_from("<Q", self._mm, rec + _REV_AT)
                        error = StoreConflict() if current != rev else None
                        if error is None:
                            old_spill = bool(self._mm[rec + _SPILLED_AT])
                            waited = bool(self._mm[rec + _WAITED_AT])
                            self._put(i, key, buf, work.expires_at)  # lease and mark cleared
                finally:
                    self._unlock()
                if waited:
                    self._wake_others(key)
                if old_spill:
                    with contextlib.suppress(FileNotFoundError):
                        self._spill_path(key, rev).unlink()
                if error is not None:
                    if spilled:
                        with contextlib.suppress(FileNotFoundError):
                            self._spill_path(key, rev + 1).unlink()
                    raise error
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._locks[session_id]

    async def delete(self, session_id: str) -> None:
        with self._mutex():
            i, _ = self._live(session_id)
            self._remove(i)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process: it exists
        return True
    return True


def _copy(s: Session) -> Session:
    return replace(s, state={k: np.array(v, np.float32) for k, v in s.state.items()})
