"""The LMDB session store: sessions shared by every process of one host that opens its directory.

Why: several worker processes of `python -m app` (the kernel hands each connection to any of
them) must see the same sessions; Redis would cost network round trips per step. LMDB
(through the `lmdb` package) is an embedded B-tree database in a memory-mapped file, safe for
many processes at once: readers never block, one writer at a time (a lock the kernel frees if
its holder dies), and a killed process never leaves a half-written transaction behind.

Three sub-databases, keyed by the session's key (its id, or a digest of a very long one):
- `head`: 32 bytes per session (incarnation, revision, expiry, TTL; app/sessions/record.py);
- `body`: the rest (model, offset, state, last chunk); rewritten only when the session changes;
- `expiry`: (expiry as big-endian microseconds + key) -> nothing. Sorted by time, so the
  soonest expiry, the expired sessions and a capacity check are each O(log n) lookups; the
  live count is the `head` entry count, which LMDB keeps.

A change is optimistic, as in the Redis store: `locked()` reads head and body in a read
transaction, the caller computes outside any transaction, and the write-back is one short
write transaction that compares incarnation and revision. When another process wrote first it
raises StoreConflict and the data plane runs the change again on the fresh session; when the
session was deleted or replaced meanwhile, SessionNotFound. Within a process a per-session
asyncio lock keeps the process's own requests from conflicting. Expiry is swept in batches of
short write transactions (base.Sweeper), so a mass expiry never holds the write lock long.

Durability: commits are not fsync'd (sessions are working state, not records). A killed
process loses nothing committed. On a disk, a machine crash may lose the last changes but
never corrupts the file; on tmpfs (the default private directory is on /dev/shm) the file dies
with the machine anyway, so writes go straight into the map there (WRITEMAP, cheaper). The
file is reused in place as sessions come and go; it grows to at most PEEPHOLE_LMDB_MAP_BYTES.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import random
import shutil
import struct
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import lmdb

from app.errors import CapacityReached, SessionNotFound, StoreConflict, StoreUnavailable
from app.sessions.base import KeyedLocks, Session, Sweeper, now
from app.sessions.record import HEAD, Head, pack_body, to_us, unpack

log = logging.getLogger("peephole.sessions.lmdb")

_TIME = struct.Struct(">Q")  # expiry index keys sort by time
_KEY_MAX = 400  # LMDB keys are at most 511 bytes; longer ids are stored by digest
DEFAULT_MAP_BYTES = 4 << 30

# LMDB forbids opening one environment twice in a process: stores on one path share it.
_ENVS: dict[str, tuple[lmdb.Environment, list[int]]] = {}  # realpath -> (env, [users])
_ENVS_LOCK = threading.Lock()


def session_key(session_id: str) -> bytes:
    """The LMDB key of an id: `s` + the id, or `h` + a digest for very long ids (one-to-one)."""
    raw = session_id.encode("utf-8", "surrogatepass")
    if len(raw) <= _KEY_MAX:
        return b"s" + raw
    return b"h" + hashlib.blake2b(raw, digest_size=32).digest()


def private_dir() -> Path:
    """A fresh directory for one run's store: /dev/shm when it has room, else the temp dir."""
    base = None
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize > 1 << 30:
            base = str(shm)
    return Path(tempfile.mkdtemp(prefix="peephole-sessions-", dir=base))


def _in_memory(path: Path) -> bool:
    """Whether `path` is on tmpfs/ramfs (its files die with the machine) per /proc/mounts."""
    real, best, kind = os.path.realpath(path), "", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            point = fields[1] if len(fields) > 2 else ""
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > len(
                best
            ):
                best, kind = point, fields[2]
    return kind in ("tmpfs", "ramfs")


def _open_env(path: Path, map_bytes: int) -> lmdb.Environment:
    """The process's one Environment for `path`. Writes go straight into the map (WRITEMAP,
    three times cheaper per commit under load here) only where the file lives in memory: on a
    disk, a machine crash could leave a WRITEMAP file corrupt, and without it only the last
    unsynced changes are lost."""
    real = os.path.realpath(path)
    with _ENVS_LOCK:
        entry = _ENVS.get(real)
        if entry is None:
            env = lmdb.open(
                real, map_size=map_bytes, max_dbs=3, sync=False, metasync=False,
                writemap=_in_memory(path), readahead=False, meminit=False, max_readers=1024,
            )  # fmt: skip
            entry = _ENVS[real] = (env, [0])
        entry[1][0] += 1
        return entry[0]


def _close_env(env: lmdb.Environment) -> None:
    with _ENVS_LOCK:
        for real, (known, users) in list(_ENVS.items()):
            if known is env:
                users[0] -= 1
                if not users[0]:
                    del _ENVS[real]
                    env.close()


def _unavailable(e: lmdb.Error, store: LMDBSessionStore) -> StoreUnavailable:
    """LMDB's failures as a 503 (never a 500)."""
    if isinstance(e, lmdb.MapFullError):
        return StoreUnavailable(
            f"the session store at {store.path} is full (PEEPHOLE_LMDB_MAP_BYTES={store.map_bytes})"
        )
    return StoreUnavailable(f"session store failed: {type(e).__name__}: {e}")


class LMDBSessionStore:
    """The SessionStore protocol over an LMDB directory shared by processes (see module doc).

    Every transaction is short and never spans an await; heads are (incarnation, revision,
    expires_us, ttl) tuples (app/sessions/record.py)."""

    def __init__(
        self,
        path: Path | str | None,
        max_sessions: int,
        *,
        sweep_seconds: float = 5.0,
        map_bytes: int = DEFAULT_MAP_BYTES,
    ) -> None:
        self.max_sessions = max_sessions
        self.map_bytes = map_bytes
        self._owns_dir = path is None
        self.path = Path(path) if path is not None else private_dir()
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._env = _open_env(self.path, map_bytes)
            self._head = self._env.open_db(b"head")
            self._body = self._env.open_db(b"body")
            self._expiry = self._env.open_db(b"expiry")
            self._env.reader_check()  # reader slots left by processes that died
        except lmdb.Error as e:
            raise StoreUnavailable(f"cannot open the session store at {self.path}: {e}") from e
        self._locks = KeyedLocks()
        self._sweeper = Sweeper(self.sweep, sweep_seconds)
        self._closed = False

    # -- inside a write transaction --------------------------------------------------------

    def _head_of(self, txn: lmdb.Transaction, key: bytes) -> Head | None:
        raw = txn.get(key, db=self._head)
        return None if raw is None else HEAD.unpack(raw)

    def _put(self, txn: lmdb.Transaction, key: bytes, head: Head, old: Head | None) -> None:
        """Write `head` and index its expiry (dropping the old index entry)."""
        if old is not None:
            txn.delete(_TIME.pack(old[2]) + key, db=self._expiry)
        txn.put(key, HEAD.pack(*head), db=self._head)
        txn.put(_TIME.pack(head[2]) + key, b"", db=self._expiry)

    def _remove(self, txn: lmdb.Transaction, key: bytes, head: Head) -> None:
        txn.delete(key, db=self._head)
        txn.delete(key, db=self._body)
        txn.delete(_TIME.pack(head[2]) + key, db=self._expiry)

    def _sweep_in(self, txn: lmdb.Transaction, limit: int) -> int:
        """Remove up to `limit` expired sessions, soonest first."""
        t = to_us(now())
        expired: list[bytes] = []
        for index_key in txn.cursor(db=self._expiry).iternext(values=False):
            if len(expired) >= limit or _TIME.unpack_from(index_key)[0] > t:
                break
            expired.append(bytes(index_key))
        for index_key in expired:
            key = index_key[_TIME.size :]
            txn.delete(key, db=self._head)
            txn.delete(key, db=self._body)
            txn.delete(index_key, db=self._expiry)
        return len(expired)

    def _soonest(self, txn: lmdb.Transaction) -> int:
        cursor = txn.cursor(db=self._expiry)
        return _TIME.unpack_from(cursor.key())[0] if cursor.first() else to_us(now()) + 1

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._sweeper.start()

    async def close(self) -> None:
        await self._sweeper.stop()
        if not self._closed:
            self._closed = True
            _close_env(self._env)
            if self._owns_dir:
                shutil.rmtree(self.path, ignore_errors=True)

    async def ping(self) -> None:
        try:
            with self._env.begin() as txn:
                txn.stat(self._head)
        except lmdb.Error as e:
            raise _unavailable(e, self) from e

    def sweep(self, limit: int = 1 << 62) -> int:
        """One short write transaction removing up to `limit` expired sessions."""
        try:
            with self._env.begin(write=True) as txn:
                return self._sweep_in(txn, limit)
        except lmdb.Error as e:
            raise _unavailable(e, self) from e

    async def count(self) -> int:
        await self._sweeper.sweep_all()
        try:
            with self._env.begin() as txn:
                return int(txn.stat(self._head)["entries"])
        except lmdb.Error as e:
            raise _unavailable(e, self) from e

    # -- the protocol --------------------------------------------------------------------------

    async def create(self, session: Session) -> Session:
        """Store it; a live session with the same (caller-chosen) id is replaced, not counted."""
        return (await self._create(session, if_absent=False))[0]

    async def create_if_absent(self, session: Session) -> tuple[Session, bool]:
        """The look and the create are one write transaction: one writer at a time, across
        every process of the host."""
        return await self._create(session, if_absent=True)

    async def _create(self, session: Session, if_absent: bool) -> tuple[Session, bool]:
        key = session_key(session.session_id)
        found = None
        try:
            with self._env.begin(write=True) as txn:
                if if_absent:
                    found = self._extend_in(txn, key)
                soonest = None if found else self._create_in(txn, session)
        except lmdb.Error as e:
            raise _unavailable(e, self) from e
        if found:
            return unpack(session.session_id, *found), False
        if soonest is not None:
            raise CapacityReached(
                retry_after=max(1, math.ceil(soonest / 1e6 - now())),
                detail=f"session capacity reached ({self.max_sessions} live sessions)",
            )
        return session, True

    def _create_in(self, txn: lmdb.Transaction, session: Session) -> int | None:
        """Store `session` within `txn` (its TTL starts at its creation); when the store is
        full, the soonest expiry (us) instead. Capacity: the live count is LMDB's entry count;
        when full, one expired session is removed to make room (each step O(log n))."""
        key = session_key(session.session_id)
        session.touch(session.created_at)
        expires = to_us(session.expires_at)
        session.expires_at = expires / 1e6
        old = self._head_of(txn, key)
        full = old is None and txn.stat(self._head)["entries"] >= self.max_sessions
        if full and not self._sweep_in(txn, 1):
            return self._soonest(txn)
        rev = 0 if old is None else old[1] + 1
        self._put(txn, key, (random.getrandbits(64), rev, expires, session.ttl_seconds), old)
        txn.put(key, pack_body(session), db=self._body)
        return None

    async def get(self, session_id: str) -> Session:
        """A snapshot; its life is extended in the same write transaction (head only)."""
        try:
            with self._env.begin(write=True) as txn:
                found = self._extend_in(txn, session_key(session_id))
        except lmdb.Error as e:
            raise _unavailable(e, self) from e
        if found is None:
            raise SessionNotFound(f"unknown or expired session {session_id!r}")
        return unpack(session_id, *found)

    def _extend_in(self, txn: lmdb.Transaction, key: bytes) -> tuple[Head, bytes] | None:
        """The live session's head, its life extended, and body; None (an expired one
        removed) when there is none."""
        t = now()
        old = self._head_of(txn, key)
        if old is not None and old[2] <= to_us(t):
            self._remove(txn, key, old)
        elif old is not None:
            head = (old[0], old[1], to_us(t + old[3]), old[3])
            self._put(txn, key, head, old)
            body = txn.get(key, db=self._body)
            if body is not None:  # (a head never comes without its body)
                return head, bytes(body)
        return None

    def _touch(self, key: bytes, read: Head) -> None:
        """Extend the life of the session read as `read`, if it is still that one."""
        with self._env.begin(write=True) as txn:
            old = self._head_of(txn, key)
            if old is not None and old[0] == read[0]:
                self._put(txn, key, (old[0], old[1], to_us(now() + old[3]), old[3]), old)

    @contextlib.asynccontextmanager
    async def locked(self, session_id: str) -> AsyncIterator[Session]:
        """Read, yield a working copy, write it back if nobody wrote in between (else
        StoreConflict: the caller runs its change again) -- see the module doc."""
        key = session_key(session_id)
        await self._locks.acquire(session_id)
        try:
            read, body = self._read(key)
            if read is None or body is None or read[2] <= to_us(now()):
                raise SessionNotFound(f"unknown or expired session {session_id!r}")
            work = unpack(session_id, read, body)
            try:
                yield work
            except BaseException:
                with contextlib.suppress(lmdb.Error):
                    self._touch(key, read)  # a refused change is still a use of the session
                raise
            self._write_back(key, read, work)
        finally:
            self._locks.release(session_id)

    def _read(self, key: bytes) -> tuple[Head | None, bytes | None]:
        """The session's head and body, from a read transaction that is gone when this returns.

        py-lmdb gives a read transaction's reader slot back only when the Transaction object
        itself goes, not when the transaction ends. Held in `locked`'s frame (suspended while
        the change runs) or in a traceback's frames (freed only by the garbage collector), the
        objects piled up under load until LMDB had no slot left (MDB_READERS_FULL: every
        request a 503). Here no frame outlives the call with the object in it."""
        try:
            txn = self._env.begin()
            try:
                raw = txn.get(key, db=self._head)
                body = txn.get(key, db=self._body)
            finally:
                txn.abort()
                del txn  # before an error's traceback can keep this frame
        except lmdb.Error as e:
            raise _unavailable(e, self) from e
        return (None if raw is None else HEAD.unpack(raw)), body

    def _write_back(self, key: bytes, read: Head, work: Session) -> None:
        """One write transaction: `work` replaces the session if it is still as `read`."""
        body = pack_body(work)
        error: Exception | None = None
        try:
            with self._env.begin(write=True) as txn:
                old = self._head_of(txn, key)
                if old is None or old[0] != read[0]:
                    error = SessionNotFound(
                        f"session {work.session_id!r} was deleted or replaced meanwhile"
                    )
                elif old[1] != read[1]:
                    error = StoreConflict(
                        f"session {work.session_id!r} was changed by another worker"
                    )
                else:
                    expires = to_us(now() + old[3])
                    self._put(txn, key, (old[0], old[1] + 1, expires, old[3]), old)
                    txn.put(key, body, db=self._body)
                    work.expires_at = expires / 1e6
        except lmdb.Error as e:
            raise _unavailable(e, self) from e
        if error is not None:
            raise error

    async def delete(self, session_id: str) -> None:
        key = session_key(session_id)
        try:
            with self._env.begin(write=True) as txn:
                head = self._head_of(txn, key)
                if head is not None:
                    self._remove(txn, key, head)
        except lmdb.Error as e:
            raise _unavailable(e, self) from e
        if head is None or head[2] <= to_us(now()):
            raise SessionNotFound(f"unknown or expired session {session_id!r}")
