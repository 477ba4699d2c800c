"""A refused create costs the same at 100 and at 100,000 live sessions (memory and lmdb).

Timed (CPU time of this process) side by side in one run, alternating, and compared as a ratio of medians with a wide
margin: a check that looks at every session (what this replaced: 72 ms per refusal at
100,000) is about 1000 times slower at 100,000 than at 100; O(log n) is within 2x.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from app.errors import CapacityReached
from app.sessions.base import Session, SessionStore
from app.sessions.lmdb import LMDBSessionStore
from app.sessions.memory import MemorySessionStore


def _session(sid: str) -> Session:
    state = {"c": np.zeros(4, np.float32)}
    return Session(session_id=sid, model="m", version=1, ttl_seconds=3600, state=state)


async def _refusal(store: SessionStore, sid: str) -> float:
    t0 = time.process_time()
    try:
        await store.create(_session(sid))
    except CapacityReached:
        return time.process_time() - t0
    raise AssertionError("a create past the capacity was accepted")


async def fill(store: SessionStore, n: int) -> None:
    """n live sessions; the lmdb store's in one transaction (its create, minus n-1 commits)."""
    if isinstance(store, LMDBSessionStore):
        with store._env.begin(write=True) as txn:
            for k in range(n):
                assert store._create_in(txn, _session(f"s{k}")) is None
        return
    for k in range(n):
        await store.create(_session(f"s{k}"))


@pytest.mark.parametrize("kind", ["memory", "lmdb"])
def test_a_refused_create_does_not_grow_with_live_sessions(kind: str, tmp_path: Path) -> None:
    def open_store(n: int) -> SessionStore:
        if kind == "memory":
            return MemorySessionStore(max_sessions=n)
        return LMDBSessionStore(tmp_path / str(n), n)

    async def go() -> None:
        small, big = open_store(100), open_store(100_000)
        for store, n in ((small, 100), (big, 100_000)):
            await fill(store, n)
            assert await store.count() == n
        times: dict[int, list[float]] = {100: [], 100_000: []}
        for r in range(20):  # alternating, so that a change of machine load hits both
            for store, n in ((small, 100), (big, 100_000)):
                for k in range(10):
                    times[n].append(await _refusal(store, f"x{r}-{k}"))
        ratio = statistics.median(times[100_000]) / statistics.median(times[100])
        assert ratio < 5, f"a refusal at 100,000 sessions costs {ratio:.1f}x one at 100"
        await small.close()
        await big.close()

    asyncio.run(go())
