"""The live-session count of a Redis store with many buckets, shared by the replicas.

With one bucket the create script counts exactly (one sorted set, O(log n)). With several,
no single key may be touched by every create (it would be a hot key on one cluster node),
so the count is the sum of the buckets' indexes, taken by one replica at a time and shared
through a key that expires after `cache_seconds`; each replica also reads it at most once
per `cache_seconds` and adds the sessions it created since. A create past the limit is then
refused without touching Redis (O(1)). The bound: a replica's view lags the truth by at most
two periods (the shared total's age plus its own), so the store can overshoot
PEEPHOLE_MAX_SESSIONS by at most the creates the OTHER replicas accept in 2 x cache_seconds
(docs/SCALING.md gives the figures).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass

import orjson

from app.sessions.redis_keys import Keys
from app.sessions.redis_link import Call, Link
from app.sessions.redis_scripts import COUNT


@dataclass
class Total:
    live: int
    soonest_ms: int  # until the soonest expiry when taken; -1 when there are none
    taken: float  # time.monotonic() of this replica when it had it


class SharedCount:
    """Cached sum of the bucket indexes (see the module docstring for the bound)."""

    def __init__(self, link: Link, keys: Keys, cache_seconds: float) -> None:
        self.link = link
        self.keys = keys
        self.cache_seconds = cache_seconds
        self._total: Total | None = None
        self._created = 0  # created by this replica since _total was taken
        self._me = secrets.token_hex(8)
        self._lock = asyncio.Lock()  # one refresh at a time in this replica

    async def sum_buckets(self) -> tuple[int, int]:
        """Every bucket, expired ids dropped: (live, ms until the soonest expiry or -1)."""
        calls = [Call(COUNT, [self.keys.index(b)], []) for b in range(self.keys.buckets)]
        live, soonest = 0, -1
        for n, ms in await self.link.eval_many(calls):
            live += int(n)
            if int(ms) >= 0 and (soonest < 0 or int(ms) < soonest):
                soonest = int(ms)
        return live, soonest

    async def _refresh(self) -> Total:
        """The shared total; when it has expired, one replica sums (the others wait for it
        briefly, then sum themselves: a summer that died must not stall the count)."""
        px = max(1, int(self.cache_seconds * 1000))
        k = self.keys
        raw = await self.link.command("GET", k.total, key=k.total)
        if raw is None:
            won = await self.link.command(
                "SET", k.total_lock, self._me, "NX", "PX", px, key=k.total_lock
            )
            for _ in range(0 if won else 5):
                await asyncio.sleep(0.02)
                raw = await self.link.command("GET", k.total, key=k.total)
                if raw is not None:
                    break
            if raw is None:
                live, soonest = await self.sum_buckets()
                raw = orjson.dumps([live, soonest])
                await self.link.command("SET", k.total, raw, "PX", px, key=k.total)
                if won:
                    await self.link.command("DEL", k.total_lock, key=k.total_lock)
        live, soonest = orjson.loads(raw)
        return Total(int(live), int(soonest), time.monotonic())

    async def current(self) -> Total:
        """The shared total plus this replica's creates since it was read."""
        if self._stale():
            async with self._lock:
                if self._stale():
                    self._total = await self._refresh()
                    self._created = 0
        t = self._total
        assert t is not None
        return Total(t.live + self._created, t.soonest_ms, t.taken)

    def _stale(self) -> bool:
        t = self._total
        return t is None or time.monotonic() - t.taken > self.cache_seconds

    def created(self) -> None:
        self._created += 1

    def deleted(self) -> None:
        self._created -= 1

    def retry_after_ms(self, t: Total) -> int:
        """Until the soonest expiry known when the total was taken."""
        if t.soonest_ms < 0:
            return 1000
        return max(1, t.soonest_ms - int((time.monotonic() - t.taken) * 1000))
