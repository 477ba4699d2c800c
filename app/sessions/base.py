"""The session record and the store protocol every implementation (memory, lmdb, redis) follows.

A store owns expiry (sliding TTL: every use pushes `expires_at` by the session's TTL),
capacity (429 past PEEPHOLE_MAX_SESSIONS, checked in O(log n)) and per-session
serialisation: `locked(id)` is the only way to change a session, and two `locked` blocks on
one session never both take effect (in one process they never overlap; across processes a
shared store refuses the second write with StoreConflict and the caller runs it again).
tests/sessions/test_contract.py holds every store to this.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Hashable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger("peephole.sessions")


def now() -> float:
    """Wall-clock seconds: expiry must mean the same across replicas sharing a store."""
    return time.time()


def iso(ts: float) -> str:
    """ISO 8601 UTC with milliseconds and a Z, e.g. 2024-05-01T12:00:00.000Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_session_id() -> str:
    return uuid.uuid4().hex


def batch_state(state: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """A session's state as a batch of one (`[1, *shape]` per tensor) for the runner. A state
    kept in a table row hands over the row, which the batcher gathers with the rest of the
    batch (app/sessions/table.py, app/inference/batcher.py)."""
    if type(state) is dict:
        return {k: v[None] for k, v in state.items()}
    batch = getattr(state, "batch", None)
    return batch() if batch is not None else {k: v[None] for k, v in state.items()}


def inputs_digest(x: np.ndarray) -> str:
    """Identity of a chunk's inputs, to recognise a retry (shape and exact float32 bytes)."""
    x = np.ascontiguousarray(x, np.float32)
    return hashlib.sha256(repr(x.shape).encode() + x.tobytes()).hexdigest()


@dataclass
class Session:
    """One streaming session, pinned to a model version. `state` has no batch dimension (a
    dict, or in the memory store's `locked()` the session's row, read on demand)."""

    session_id: str
    model: str
    version: int
    ttl_seconds: int
    state: Mapping[str, np.ndarray]
    offset: int = 0
    created_at: float = field(default_factory=now)
    expires_at: float = 0.0
    # The last applied chunk, kept so that a retry of it is answered without applying it again.
    last_offset: int | None = None
    last_digest: str | None = None
    last_outputs: np.ndarray | None = None  # [T, output_size]
    last_internals: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.expires_at:
            self.expires_at = self.created_at + self.ttl_seconds

    def touch(self, at: float | None = None) -> None:
        self.expires_at = (at if at is not None else now()) + self.ttl_seconds

    def expired(self, at: float | None = None) -> bool:
        return (at if at is not None else now()) >= self.expires_at

    def forget_last_chunk(self) -> None:
        self.last_offset = self.last_digest = self.last_outputs = self.last_internals = None


class Sweeper:
    """Calls `sweep(batch)` every `seconds` in the background; an error is logged, never fatal.

    `sweep(batch)` removes at most `batch` expired sessions and returns how many it removed;
    a full batch is followed by another after a yield to the event loop, so a mass expiry is
    cleared in short steps that requests (and, for a shared store, other workers) slot between.
    64 per batch: about 0.2 ms of CPU in the lmdb store's write transaction (256: 0.6 ms), and
    a write transaction preempted by the OS holds every worker's writes for as long.
    """

    def __init__(self, sweep: Callable[[int], int], seconds: float, batch: int = 64) -> None:
        self._sweep = sweep
        self.seconds = seconds
        self.batch = batch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._forever(), name="session-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sweep_all(self) -> int:
        """Remove every expired session, batch by batch; returns how many went."""
        total, batches, longest, t0 = 0, 0, 0.0, time.perf_counter()
        while True:
            t = time.perf_counter()
            n = self._sweep(self.batch)
            longest = max(longest, time.perf_counter() - t)
            total, batches = total + n, batches + 1
            if n < self.batch:
                break
            await asyncio.sleep(0)
        if total:
            ms = (time.perf_counter() - t0) * 1e3
            level = logging.INFO if total >= 1000 else logging.DEBUG
            log.log(level, "swept %d expired sessions in %d batches, %.0f ms (longest batch "
                    "%.1f ms)", total, batches, ms, longest * 1e3)  # fmt: skip
        return total

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.seconds)
            try:
                await self.sweep_all()
            except Exception:  # never let the sweeper die
                log.exception("session sweep failed")


class KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it.

    `acquire`/`release` rather than a context manager: they sit inside a store's `locked()`,
    on every step, where one generator layer less is a measurable microsecond. For the same
    reason a key nobody contends has no asyncio.Lock at all: the lock is made when a second
    caller comes, taken at once on the holder's behalf, and then waited for."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, list[Any]] = {}  # key -> [lock or None, holders and waiters]

    def __contains__(self, key: Hashable) -> bool:
        """Whether someone holds or waits for `key`."""
        return key in self._locks

    def take(self, key: Hashable) -> bool:
        """Take the key's lock if nobody holds or waits for it, without an await (the usual
        case: a coroutine less per step); False when `acquire` must wait for it."""
        if key in self._locks:
            return False
        self._locks[key] = [None, 1]
        return True

    async def acquire(self, key: Hashable) -> bool:
        """Take the key's lock; True when it had to wait (others may have run meanwhile)."""
        entry = self._locks.get(key)
        if entry is None:
            self._locks[key] = [None, 1]
            return False
        entry[1] += 1
        lock = entry[0]
        if lock is None:
            lock = entry[0] = asyncio.Lock()
            await lock.acquire()  # free: taken at once, for the holder
        try:
            await lock.acquire()
        except BaseException:  # cancelled while waiting
            self._leave(key, entry)
            raise
        return True

    def release(self, key: Hashable) -> None:
        entry = self._locks[key]
        if entry[0] is not None:
            entry[0].release()
        self._leave(key, entry)

    def _leave(self, key: Hashable, entry: list[Any]) -> None:
        entry[1] -= 1
        if not entry[1]:
            del self._locks[key]


@runtime_checkable
class SessionStore(Protocol):
    """What the data plane needs from a session store.

    Errors: `SessionNotFound` (unknown or expired), `CapacityReached` (create past the limit),
    `StoreUnavailable` (backend unreachable) — all from app.errors.
    """

    async def start(self) -> None:
        """Begin background work (expiry sweeps, connections)."""

    async def close(self) -> None:
        """Stop background work and release connections."""

    async def ping(self) -> None:
        """Return when the store answers; raise StoreUnavailable otherwise."""

    async def count(self) -> int:
        """Live sessions."""

    async def create(self, session: Session) -> Session:
        """Store a new session (its TTL starts now); CapacityReached past the limit."""

    async def create_if_absent(self, session: Session) -> tuple[Session, bool]:
        """Store `session` unless a live session has its id: (it as stored, True), else (the
        live one as `get` gives it, False). Atomic: of concurrent calls for one id, in any
        processes sharing the store, exactly one creates and the others get its session."""

    async def get(self, session_id: str) -> Session:
        """A snapshot of the session, its life extended by its TTL; SessionNotFound if gone."""

    def locked(self, session_id: str) -> AbstractAsyncContextManager[Session]:
        """Exclusive access: yields a working copy; written back (and its TTL extended) when
        the block exits normally, discarded when it raises. SessionNotFound if gone."""

    async def delete(self, session_id: str) -> None:
        """Remove the session; SessionNotFound if gone."""
