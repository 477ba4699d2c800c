"""The Lua scripts of the Redis store: each change of a session is one script, run atomically
on the node that holds the session (its hash and its bucket's index share one hash slot).

Revisions are random 62-bit integers chosen by the writer, not counters: a write names the
revision it read and the one it sets, so a write retried after a lost reply recognises
itself (the hash already holds its new revision) and a revision is never reused, even after
a failover dropped writes. Times come from Redis (`TIME`), so replicas agree on expiry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Script:
    """A Lua source and its SHA1, run with EVALSHA (loaded on NOSCRIPT)."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


_NOW = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
"""

# KEYS[1] = a bucket's index (zset of ids scored by expiry, ms). Drops expired ids.
# -> {live count, ms until the soonest expiry or -1 when empty}
COUNT = Script(
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then return {0, -1} end
return {redis.call('ZCARD', KEYS[1]), tonumber(first[2]) - now}
"""
)

# extend(): the life of the live session in KEYS[1] (id ARGV[1], index KEYS[2]) extended by
# its TTL -> its field/value list.
_EXTEND = """
local function extend()
  local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl'))
  redis.call('HSET', KEYS[1], 'expires_at', now + ttl)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
  return redis.call('HGETALL', KEYS[1])
end
"""

# KEYS[1] = session hash, KEYS[2] = its bucket's index. ARGV[1] = id, ARGV[2] = limit
# (> 0: refuse a new id when the index holds that many; 0: no check; -1: replace only),
# ARGV[3] = ttl ms, ARGV[4] = revision, ARGV[5] = 1: only if absent (a live session is kept,
# its life extended, and returned), ARGV[6..] = field/value pairs.
# -> {1, created ms, expires ms} created (or this very create, retried), {0, ms until a slot
#    frees}, {2, the live session's field/value list} (only if absent).
CREATE = Script(
    _NOW
    + _EXTEND
    + """
local limit = tonumber(ARGV[2])
local exists = redis.call('EXISTS', KEYS[1])
if exists == 1 and redis.call('HGET', KEYS[1], 'rev') == ARGV[4] then
  local at = redis.call('HMGET', KEYS[1], 'created_at', 'expires_at')
  return {1, tonumber(at[1]), tonumber(at[2])}
end
if exists == 1 and ARGV[5] == '1' then return {2, extend()} end
if exists == 0 and limit < 0 then return {0, -1} end
if exists == 0 and limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= limit then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {0, tonumber(first[2]) - now}
  end
end
local ttl = tonumber(ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'created_at', now, 'expires_at', now + ttl, 'rev', ARGV[4],
           unpack(ARGV, 6))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
return {1, now, now + ttl}
"""
)

# KEYS as CREATE; ARGV[1] = id. Extends the life. -> the hash's field/value list, or false.
TOUCH = Script(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
"""
    + _NOW
    + _EXTEND
    + """
return extend()
"""
)

# KEYS as CREATE; ARGV[1] = id, ARGV[2] = revision read, ARGV[3] = new revision, ARGV[4] =
# ttl ms, ARGV[5] = n, ARGV[6..5+n] = fields to remove, ARGV[6+n..] = field/value pairs (only
# the fields that changed: the hash holds the rest, as the revision proves).
# -> {1, expires ms} written (or already written by this very call, retried),
#    {0, the hash's field/value list} another writer came first, {-1} gone.
CAS = Script(
    """
local rev = redis.call('HGET', KEYS[1], 'rev')
if not rev then return {-1} end
if rev == ARGV[3] then return {1, tonumber(redis.call('HGET', KEYS[1], 'expires_at'))} end
if rev ~= ARGV[2] then return {0, redis.call('HGETALL', KEYS[1])} end
"""
    + _NOW
    + """
local ttl = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
if n > 0 then redis.call('HDEL', KEYS[1], unpack(ARGV, 6, 5 + n)) end
redis.call('HSET', KEYS[1], 'rev', ARGV[3], 'expires_at', now + ttl, unpack(ARGV, 6 + n))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
return {1, now + ttl}
"""
)

# KEYS as CREATE; ARGV[1] = id, ARGV[2] (optional) = a revision: only the session at it.
# -> 1 deleted, 0 gone (or at another revision).
DELETE = Script(
    """
if ARGV[2] and redis.call('HGET', KEYS[1], 'rev') ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
"""
)

ALL = (COUNT, CREATE, TOUCH, CAS, DELETE)
