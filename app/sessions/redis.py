"""The Redis session store: sessions shared by every replica, so any replica serves any session.

Layout (prefix `peephole:` by default):
- `<prefix>s:<id>`: a hash per session; the state and the last chunk's outputs as raw
  float32 bytes (compact, exact), the rest as short strings; Redis expiry is its TTL.
- `<prefix>sessions`: a sorted set of live ids scored by expiry (ms), so capacity is counted
  across replicas in one place.

A change is optimistic: `locked()` reads the session with its revision `rev`, the caller
works on a copy, and the write is a Lua compare-and-set on `rev`. When another replica wrote
first, the write raises `StoreConflict` and the caller runs its block again on the fresh
session (DataPlane does). Within one process a per-session asyncio lock keeps the replicas'
own requests from conflicting with each other. Times come from Redis (`TIME`) so replicas
agree on expiry whatever their clocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar
from weakref import WeakValueDictionary

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.config import Settings
from app.errors import CapacityReached, SessionNotFound, StoreConflict, StoreUnavailable
from app.sessions.base import Session

log = logging.getLogger("peephole.sessions.redis")
T = TypeVar("T")

# KEYS[1] = index zset. ARGV: none. Drops expired ids, returns the live count.
_COUNT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""

# KEYS[1] = session hash, KEYS[2] = index. ARGV[1] = id, ARGV[2] = max sessions,
# ARGV[3] = ttl ms, ARGV[4..] = field/value pairs. -> {1, created_ms, expires_ms} or {0, soonest}
_CREATE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local exists = redis.call('EXISTS', KEYS[1])
if exists == 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {0, tonumber(first[2]) - now}
end
local ttl = tonumber(ARGV[3])
local rev = (tonumber(redis.call('HGET', KEYS[1], 'rev')) or -1) + 1  -- a stale CAS fails
redis.call('DEL', KEYS[1])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'created_at', now, 'expires_at', now + ttl, 'rev', rev)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
return {1, now, now + ttl}
"""

# KEYS[1] = session hash, KEYS[2] = index; ARGV[1] = id. Extends the life, returns the hash.
_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl'))
redis.call('HSET', KEYS[1], 'expires_at', now + ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS as _TOUCH; ARGV[1] = id, ARGV[2] = expected rev, ARGV[3..] = field/value pairs,
# ARGV fields named in DELFIELDS (after a '--' marker) are removed.
# -> {1, rev, expires_ms} written, {0} conflict, {-1} gone.
_CAS = """
local rev = redis.call('HGET', KEYS[1], 'rev')
if not rev then return {-1} end
if rev ~= ARGV[2] then return {0} end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local i = 3
while i <= #ARGV and ARGV[i] ~= '--' do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for j = i + 1, #ARGV do redis.call('HDEL', KEYS[1], ARGV[j]) end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl'))
local newrev = redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[1], 'expires_at', now + ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
return {1, newrev, now + ttl}
"""

# KEYS as _TOUCH; ARGV[1] = id. -> 1 deleted, 0 gone.
_DELETE = """
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
"""

_LAST_FIELDS = ("last_offset", "last_digest", "last_outputs", "last_shape", "last_internals")


def _pack_array(a: np.ndarray) -> tuple[bytes, bytes]:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.tobytes(), orjson.dumps(list(a.shape))


def _unpack_array(data: bytes, shape: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float32).reshape(orjson.loads(shape)).copy()


def _encode(s: Session) -> list[bytes | str | int]:
    """The session's fields as a flat HSET argument list (rev, times and expiry excluded)."""
    out: list[bytes | str | int] = [
        "model", s.model, "version", s.version, "ttl", s.ttl_seconds * 1000, "offset", s.offset,
        "state_names", orjson.dumps(list(s.state)),
    ]
    for name, value in s.state.items():
        data, shape = _pack_array(value)
        out += [f"state:{name}", data, f"shape:{name}", shape]
    if s.last_offset is not None and s.last_outputs is not None:
        data, shape = _pack_array(s.last_outputs)
        out += ["last_offset", s.last_offset, "last_digest", s.last_digest or "",
                "last_outputs", data, "last_shape", shape]
        if s.last_internals is not None:
            blob = orjson.dumps(s.last_internals, option=orjson.OPT_SERIALIZE_NUMPY)
            out += ["last_internals", blob]
    return out


def _decode(session_id: str, h: dict[bytes, bytes]) -> tuple[Session, int]:
    """A Session and its revision from the hash."""
    names: list[str] = orjson.loads(h[b"state_names"])
    state = {n: _unpack_array(h[f"state:{n}".encode()], h[f"shape:{n}".encode()]) for n in names}
    s = Session(
        session_id=session_id,
        model=h[b"model"].decode(),
        version=int(h[b"version"]),
        ttl_seconds=int(h[b"ttl"]) // 1000,
        state=state,
        offset=int(h[b"offset"]),
        created_at=int(h[b"created_at"]) / 1000,
        expires_at=int(h[b"expires_at"]) / 1000,
    )
    if b"last_offset" in h:
        s.last_offset = int(h[b"last_offset"])
        s.last_digest = h[b"last_digest"].decode() or None
        s.last_outputs = _unpack_array(h[b"last_outputs"], h[b"last_shape"])
        if b"last_internals" in h:
            s.last_internals = orjson.loads(h[b"last_internals"])
    return s, int(h[b"rev"])


def _pairs(raw: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(raw[::2], raw[1::2], strict=True))


class RedisSessionStore:
    """Sessions in Redis, shared by every replica pointing at the same URL and prefix."""

    def __init__(
        self, client: aioredis.Redis, max_sessions: int, prefix: str = "peephole:"
    ) -> None:
        self.client = client
        self.max_sessions = max_sessions
        self.prefix = prefix
        self.index = f"{prefix}sessions"
        self._count = client.register_script(_COUNT)
        self._create = client.register_script(_CREATE)
        self._touch = client.register_script(_TOUCH)
        self._cas = client.register_script(_CAS)
        self._delete = client.register_script(_DELETE)
        self._local: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisSessionStore:
        client = aioredis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout_seconds,
            socket_timeout=settings.redis_timeout_seconds,
            health_check_interval=10,
            max_connections=settings.redis_max_connections,
        )
        return cls(client, settings.max_sessions, settings.redis_prefix)

    def _key(self, session_id: str) -> str:
        return f"{self.prefix}s:{session_id}"

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        """Every Redis call goes through here: an unreachable Redis is a 503, never a 500."""
        try:
            return await fn(*args, **kw)
        except (RedisError, OSError) as e:
            raise StoreUnavailable(f"session store unreachable: {type(e).__name__}: {e}") from e

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing to start; a Redis that is down now only makes readiness fail until it is back."""
        try:
            await self.ping()
        except StoreUnavailable as e:
            log.warning("%s (sessions answer 503 until it is reachable)", e.detail)

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()

    async def ping(self) -> None:
        await self._call(self.client.ping)

    async def count(self) -> int:
        return int(await self._call(self._count, keys=[self.index]))

    # -- the protocol ----------------------------------------------------------------------

    async def create(self, session: Session) -> Session:
        sid = session.session_id
        r = await self._call(
            self._create,
            keys=[self._key(sid), self.index],
            args=[sid, self.max_sessions, session.ttl_seconds * 1000, *_encode(session)],
        )
        if int(r[0]) == 0:
            raise CapacityReached(
                retry_after=max(1, -(-int(r[1]) // 1000)),
                detail=f"session capacity reached ({self.max_sessions} live sessions)",
            )
        return replace(session, created_at=int(r[1]) / 1000, expires_at=int(r[2]) / 1000)

    async def _read(self, session_id: str) -> tuple[Session, int]:
        raw = await self._call(
            self._touch, keys=[self._key(session_id), self.index], args=[session_id]
        )
        if not raw:
            raise SessionNotFound(f"unknown or expired session {session_id!r}")
        return _decode(session_id, _pairs(raw))

    async def get(self, session_id: str) -> Session:
        return (await self._read(session_id))[0]

    @contextlib.asynccontextmanager
    async def locked(self, session_id: str) -> AsyncIterator[Session]:
        lock = self._local.get(session_id)
        if lock is None:
            lock = self._local[session_id] = asyncio.Lock()
        async with lock:
            current, rev = await self._read(session_id)
            work = replace(current)
            yield work
            await self._write(work, rev)

    async def _write(self, s: Session, rev: int) -> None:
        fields = _encode(s)
        gone = [f for f in _LAST_FIELDS if f not in fields[::2]]
        r = await self._call(
            self._cas,
            keys=[self._key(s.session_id), self.index],
            args=[s.session_id, rev, *fields, "--", *gone],
        )
        status = int(r[0])
        if status == -1:
            raise SessionNotFound(f"session {s.session_id!r} was deleted meanwhile")
        if status == 0:
            raise StoreConflict(f"session {s.session_id!r} was changed by another replica")
        s.expires_at = int(r[2]) / 1000

    async def delete(self, session_id: str) -> None:
        n = await self._call(
            self._delete, keys=[self._key(session_id), self.index], args=[session_id]
        )
        if not int(n):
            raise SessionNotFound(f"unknown or expired session {session_id!r}")
