"""The Redis session store: sessions shared by every replica, so any replica serves any session.

One Redis, a Sentinel-managed master or a Redis Cluster (PEEPHOLE_REDIS_MODE; redis_link.py).
Layout (redis_keys.py): a hash per session, and per bucket a sorted set of live ids scored
by expiry that counts them; on a cluster a session's keys share its bucket's hash tag, so
every change is one script on one node. Capacity: exact in the create script with one
bucket, a briefly cached sum with several (redis_count.py, which gives the bound).

A change is optimistic: `locked()` yields a copy of the session with the revision it was
read at, the caller works on the copy, and the write is a Lua compare-and-set on that
revision (redis_scripts.py). When another replica wrote first, the write raises
`StoreConflict` and the caller runs its block again on the fresh session (DataPlane does).
Within one process a per-session asyncio lock keeps the replica's own requests apart.

One round trip per step: each replica keeps the copy it last wrote of its most recent
sessions, and a step on one of those goes straight to the compare-and-set (a conflicting
write returns the current hash, so even a miss costs the two round trips of a plain
HGETALL and a write). A write sends only the fields that changed: the matching revision
proves the hash holds the rest. A block that fails on a cached copy is checked against
Redis before its error is believed, so a stale copy never yields a wrong 409. Calls from
one event-loop turn share a pipeline per node (redis_batch.py).

Durability: with PEEPHOLE_REDIS_MIN_REPLICAS = n, every write is followed on the same
connection by WAIT n; a change is acknowledged only when n replicas hold it. When fewer
confirm in time the answer is a 503: the change is on the master and may or may not survive
a failover, and a retry with the same offset and inputs is answered exactly once either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from weakref import WeakValueDictionary

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from app.config import Settings
from app.errors import CapacityReached, SessionNotFound, StoreConflict, StoreUnavailable
from app.sessions.base import Session
from app.sessions.redis_codec import as_fields, changes, decode, encode, new_revision, pairs
from app.sessions.redis_count import SharedCount, Total
from app.sessions.redis_keys import Keys
from app.sessions.redis_link import Call, Link, SingleLink, make_link
from app.sessions.redis_scripts import CAS, COUNT, CREATE, DELETE, TOUCH, Script

log = logging.getLogger("peephole.sessions.redis")
# What a Redis that is down, restarting, failing over or resharding raises (past the link's
# retries): a 503, never a 500.
_DOWN = (RedisError, RedisClusterException, OSError)


def _unavailable(e: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"session store unreachable: {type(e).__name__}: {e}")


class ReplicationShortfall(StoreUnavailable):
    """Too few replicas confirmed a write in time: 503, retry with the same offset."""

    def __init__(self, got: int, wanted: int, seconds: float) -> None:
        super().__init__(
            f"the change reached {got} of the {wanted} Redis replicas required within "
            f"{seconds:g} s; it may or may not survive a failover: retry with the same offset "
            "and inputs (answered exactly once either way)",
            headers={"Retry-After": "1"},
        )


Fields = dict[str, bytes | str | int]


class _Written:
    """The copies this replica last wrote or read (LRU), with their revision and encoded
    fields, so that its next step is one round trip and sends only what changed."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[str, tuple[Session, str, Fields]] = OrderedDict()

    def get(self, session_id: str) -> tuple[Session, str, Fields] | None:
        hit = self._d.get(session_id)
        if hit is not None:
            self._d.move_to_end(session_id)
        return hit

    def put(self, s: Session, rev: str, fields: Fields | None = None) -> None:
        if not self.size:
            return
        copy = replace(s, state=dict(s.state))
        self._d[s.session_id] = (copy, rev, fields if fields is not None else as_fields(encode(s)))
        self._d.move_to_end(s.session_id)
        if len(self._d) > self.size:
            self._d.popitem(last=False)

    def drop(self, session_id: str) -> None:
        self._d.pop(session_id, None)


class RedisSessionStore:
    """Sessions in Redis, shared by every replica pointing at the same Redis and prefix."""

    def __init__(
        self,
        link: Link | aioredis.Redis,
        max_sessions: int,
        prefix: str = "peephole:",
        *,
        buckets: int = 1,
        tagged: bool = False,
        min_replicas: int = 0,
        wait_timeout_seconds: float = 0.5,
        count_cache_seconds: float = 1.0,
        cache_sessions: int = 10000,
    ) -> None:
        self.link = link if isinstance(link, Link) else SingleLink(link, 0.25, 500, 64)
        self.max_sessions = max_sessions
        self.keys = Keys(prefix, buckets, tagged)
        self.min_replicas = min_replicas
        self.wait_timeout_seconds = wait_timeout_seconds
        self.counter = (
            SharedCount(self.link, self.keys, count_cache_seconds) if buckets > 1 else None
        )
        self._written = _Written(cache_sessions)
        self._local: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisSessionStore:
        cluster = settings.redis_mode == "cluster"
        buckets = settings.redis_buckets or (1024 if cluster else 1)
        return cls(
            make_link(settings),
            settings.max_sessions,
            settings.redis_prefix,
            buckets=buckets,
            tagged=cluster,
            min_replicas=settings.redis_min_replicas,
            wait_timeout_seconds=settings.redis_wait_timeout_seconds,
            count_cache_seconds=settings.redis_count_cache_seconds,
            cache_sessions=settings.redis_cache_sessions,
        )

    async def _eval(self, script: Script, keys: list[str], args: list[Any], write: bool) -> Any:
        """Every Redis call goes through here: an unreachable Redis is a 503, never a 500; a
        write is acknowledged only once PEEPHOLE_REDIS_MIN_REPLICAS replicas hold it."""
        wait = self.min_replicas if write else 0
        try:
            result, acked = await self.link.eval(Call(script, keys, args), wait)
        except _DOWN as e:
            raise _unavailable(e) from e
        if wait and (acked or 0) < wait:
            raise ReplicationShortfall(acked or 0, wait, self.wait_timeout_seconds)
        return result

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing to start; a Redis that is down now only makes readiness fail until it is back."""
        try:
            await self.ping()
        except StoreUnavailable as e:
            log.warning("%s (sessions answer 503 until it is reachable)", e.detail)

    async def close(self) -> None:
        await self.link.close()

    async def ping(self) -> None:
        try:
            await self.link.ping()
        except _DOWN as e:
            raise _unavailable(e) from e

    async def _shared_total(self) -> Total:
        assert self.counter is not None
        try:
            return await self.counter.current()
        except _DOWN as e:
            raise _unavailable(e) from e

    async def count(self) -> int:
        if self.counter is not None:
            return (await self._shared_total()).live
        n, _ = await self._eval(COUNT, [self.keys.index(0)], [], write=False)
        return int(n)

    # -- the protocol ----------------------------------------------------------------------

    async def create(self, session: Session) -> Session:
        return (await self._create(session, if_absent=False))[0]

    async def create_if_absent(self, session: Session) -> tuple[Session, bool]:
        """The look and the create are one script on the session's node."""
        return await self._create(session, if_absent=True)

    async def _create(self, session: Session, if_absent: bool) -> tuple[Session, bool]:
        sid = session.session_id
        limit, total = self.max_sessions, None
        if self.counter is not None:  # several buckets: the shared count decides
            total = await self._shared_total()
            # Under the limit no check in Redis (0); at it, only a replacement goes (-1).
            limit = 0 if total.live < self.max_sessions else -1
        rev = new_revision()
        try:
            r = await self._eval(
                CREATE,
                list(self.keys.session(sid)),
                [sid, limit, session.ttl_seconds * 1000, rev, int(if_absent), *encode(session)],
                write=True,
            )
        except ReplicationShortfall:
            with contextlib.suppress(StoreUnavailable):  # do not leave it counted (if ours)
                await self._eval(DELETE, list(self.keys.session(sid)), [sid, rev], write=False)
            raise
        if int(r[0]) == 2:
            found, found_rev = decode(sid, pairs(r[1]))
            self._written.put(found, found_rev)
            return found, False
        if int(r[0]) == 0:
            ms = int(r[1])
            if ms < 0 and self.counter is not None and total is not None:
                ms = self.counter.retry_after_ms(total)
            raise CapacityReached(
                retry_after=max(1, -(-ms // 1000)),
                detail=f"session capacity reached ({self.max_sessions} live sessions)",
            )
        if self.counter is not None and limit == 0:
            self.counter.created()
        made = replace(session, created_at=int(r[1]) / 1000, expires_at=int(r[2]) / 1000)
        self._written.put(made, rev)
        return made, True

    async def _read(self, session_id: str) -> tuple[Session, str]:
        raw = await self._eval(TOUCH, list(self.keys.session(session_id)), [session_id], False)
        if not raw:
            self._written.drop(session_id)
            raise SessionNotFound(f"unknown or expired session {session_id!r}")
        return decode(session_id, pairs(raw))

    async def get(self, session_id: str) -> Session:
        s, rev = await self._read(session_id)
        self._written.put(s, rev)
        return s

    async def _fetch(self, session_id: str) -> tuple[Session, str]:
        """The session as stored (a plain HGETALL: the write that follows extends its life)."""
        key = self.keys.session(session_id)[0]
        try:
            h = await self.link.read("HGETALL", key, key=key)
        except _DOWN as e:
            raise _unavailable(e) from e
        if not h:
            self._written.drop(session_id)
            raise SessionNotFound(f"unknown or expired session {session_id!r}")
        return decode(session_id, h)

    @contextlib.asynccontextmanager
    async def locked(self, session_id: str) -> AsyncIterator[Session]:
        lock = self._local.get(session_id)
        if lock is None:
            lock = self._local[session_id] = asyncio.Lock()
        async with lock:
            hit = self._written.get(session_id)
            if hit is not None:
                current, rev, fields = hit
            else:
                current, rev = await self._fetch(session_id)
                fields = as_fields(encode(current))
            work = replace(current, state=dict(current.state))
            try:
                yield work
            except StoreUnavailable:
                raise
            except Exception:
                # A refused change is a use too (its life is extended); and a block that saw
                # a cached copy is only believed if that copy was current.
                latest, latest_rev = await self._read(session_id)
                self._written.put(latest, latest_rev)
                if hit is not None and latest_rev != rev:
                    raise StoreConflict(f"session {session_id!r} changed elsewhere") from None
                raise
            await self._write(work, rev, fields)

    async def _write(self, s: Session, rev: str, before: Fields) -> None:
        after = as_fields(encode(s))
        flat, gone = changes(after, before)
        new = new_revision()
        self._written.drop(s.session_id)  # until this write is known to be in place
        r = await self._eval(
            CAS,
            list(self.keys.session(s.session_id)),
            [s.session_id, rev, new, s.ttl_seconds * 1000, len(gone), *gone, *flat],
            write=True,
        )
        status = int(r[0])
        if status == -1:
            raise SessionNotFound(f"session {s.session_id!r} was deleted meanwhile")
        if status == 0:
            self._written.put(*decode(s.session_id, pairs(r[1])))
            raise StoreConflict(f"session {s.session_id!r} was changed by another replica")
        s.expires_at = int(r[1]) / 1000
        self._written.put(s, new, after)

    async def delete(self, session_id: str) -> None:
        self._written.drop(session_id)
        n = await self._eval(DELETE, list(self.keys.session(session_id)), [session_id], True)
        if not int(n):
            raise SessionNotFound(f"unknown or expired session {session_id!r}")
        if self.counter is not None:
            self.counter.deleted()
