"""A restarted Redis is used again at once (stale pooled connections are dropped and
re-dialled, not handed out one by one), and a refused create costs the same few commands
whatever the number of live sessions."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import time
from pathlib import Path

import numpy as np
import pytest

from app.config import Settings
from app.errors import CapacityReached
from app.sessions.base import Session
from app.sessions.redis import RedisSessionStore
from tests.live import RedisServer, Replica
from tests.redis.conftest import MODEL
from tests.redis.test_replicas import create, step

pytestmark = pytest.mark.redis


def test_no_503_once_a_restarted_redis_answers(repo: Path, tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    replica = Replica(repo, server.url, PEEPHOLE_REDIS_MAX_CONNECTIONS="64").start()
    try:
        c = replica.client()
        sids = [create(c) for _ in range(4)]
        x = np.ones((2, 2), np.float32)
        # Open many pooled connections: concurrent requests each take one.
        with cf.ThreadPoolExecutor(max_workers=16) as pool:
            assert all(s == 200 for s in pool.map(
                lambda i: c.get(f"/v1/sessions/{sids[i % 4]}").status_code,
                range(32),
            ))  # fmt: skip
        server.stop()
        server.start()  # the append-only file keeps the sessions; every pooled socket is dead
        statuses = [c.get(f"/v1/sessions/{sids[i % 4]}").status_code for i in range(20)]
        statuses += [step(c, sid, x, 0).status_code for sid in sids]
        assert statuses == [200] * 24, statuses
    finally:
        replica.stop()
        server.stop()


def test_a_burst_past_the_pool_queues_for_a_connection(tmp_path: Path) -> None:
    """redis-py refuses a call past max_connections; the store makes it wait its turn."""
    server = RedisServer(tmp_path)
    server.start()

    async def go() -> None:
        store = RedisSessionStore.from_settings(
            Settings(session_store="redis", redis_url=server.url, redis_max_connections=4)
        )
        await asyncio.gather(*(store.create(_session(f"b{i}")) for i in range(100)))
        got = await asyncio.gather(*(store.get(f"b{i}") for i in range(100)))
        assert [s.session_id for s in got] == [f"b{i}" for i in range(100)]
        await store.close()

    try:
        asyncio.run(go())
    finally:
        server.stop()


def _session(sid: str) -> Session:
    return Session(sid, MODEL, 1, 3600, {"h": np.zeros(4, np.float32)})


def _refusal_commands(url: str, live: int, prefix: str) -> dict[str, int]:
    """Fill a store to `live` sessions, then count the commands one refused create runs."""
    import redis

    plain = redis.Redis.from_url(url)

    async def go() -> dict[str, int]:
        store = RedisSessionStore.from_settings(
            Settings(session_store="redis", redis_url=url, max_sessions=live, redis_prefix=prefix)
        )
        for start in range(0, live, 250):
            ids = range(start, min(live, start + 250))
            await asyncio.gather(*(store.create(_session(f"s{i}")) for i in ids))
        before = plain.info("commandstats")
        with pytest.raises(CapacityReached):
            await store.create(_session("one-too-many"))
        after = plain.info("commandstats")
        await store.close()
        return {
            k: after[k]["calls"] - before.get(k, {"calls": 0})["calls"]
            for k in after
            if k != "cmdstat_info" and after[k]["calls"] != before.get(k, {"calls": 0})["calls"]
        }

    try:
        return asyncio.run(go())
    finally:
        plain.close()


def test_a_refused_create_costs_the_same_at_10_and_5000_live_sessions(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        t = time.monotonic()
        few = _refusal_commands(server.url, 10, "few:")
        many = _refusal_commands(server.url, 5000, "many:")
        assert time.monotonic() - t < 120  # bounded set-up, not a timing claim
        # One script; inside it O(log n) commands only (ZCARD is O(1), the range reads one
        # entry, and the expired-id sweep removes only expired ids).
        assert few == many, (few, many)
        assert set(few) == {
            "cmdstat_evalsha", "cmdstat_time", "cmdstat_exists",
            "cmdstat_zremrangebyscore", "cmdstat_zcard", "cmdstat_zrange",
        }, few  # fmt: skip
        assert all(n == 1 for n in few.values()), few
    finally:
        server.stop()
