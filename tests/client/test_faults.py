"""Exactly-once under faults: 10,000 steps over 20 sessions through a proxy that cuts and
delays connections, into two `python -m app` replicas sharing a real Redis, one of which
is SIGKILLed and restarted mid-run. Every session must end at the offset of the steps sent,
and its outputs must equal one whole-sequence predict of everything it was fed.

Run with `pytest -s` to see the figures (faults injected by kind, retries, time).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import redis

from peephole import AsyncClient, Client, Retry, RetryStats
from tests.client.conftest import MG
from tests.client.faults import FaultProxy
from tests.live import RedisServer, Replica

pytestmark = pytest.mark.redis

SESSIONS, STEPS = 20, 500  # step calls per session: 10,000 in all, of 1-3 time steps each
TIMEOUT, HOLD = 1.0, 1.2  # the client's per-attempt timeout; how long the proxy holds data
PATIENT = Retry(retries=15, backoff=0.02, max_backoff=0.5, budget=30)


class Progress:
    """Steps answered so far (any thread), for the killer to time its kill."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self.n += 1


class Killer(threading.Thread):
    """SIGKILL `replica` once a third of the steps are answered; restart it at a half."""

    def __init__(self, replica: Replica, progress: Progress, total: int) -> None:
        super().__init__(daemon=True)
        self.replica, self.progress, self.total = replica, progress, total
        self.kills = 0
        self.stop = threading.Event()

    def _wait_for(self, fraction: float) -> bool:
        while self.progress.n < fraction * self.total:
            if self.stop.wait(0.01):
                return False
        return True

    def run(self) -> None:
        if self._wait_for(1 / 3):
            self.replica.kill()
            self.kills += 1
            if self._wait_for(1 / 2):
                self.replica.start()

    def __enter__(self) -> Killer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=90)
        if self.replica.proc is None or self.replica.proc.poll() is not None:
            self.replica.start()  # the run ended before the restart: leave two replicas


@pytest.fixture(scope="module")
def cluster(
    repo: Path, redis_server: RedisServer
) -> Iterator[tuple[FaultProxy, list[Replica], RedisServer]]:
    replicas = [Replica(repo, redis_server.url, PEEPHOLE_WORKERS="1") for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Replica.start, replicas))
        for r in replicas:  # warm: a cold first request is not what the faults are about
            with Client(r.url, timeout=60) as c, c.session(MG) as s:
                s.step(np.full((2, 1), 0.9))
        proxy = FaultProxy(
            lambda: [r.port for r in replicas], cut=0.02, delay=0.006, late=0.006, hold=HOLD
        )
        with proxy:
            yield proxy, replicas, redis_server
    finally:
        for r in replicas:
            r.stop()


def plans(seed: int) -> list[list[np.ndarray]]:
    """Per session, STEPS chunks of 1-3 time steps of a Mackey-Glass-like input."""
    rng = np.random.default_rng(seed)
    return [
        [rng.normal(0.9, 0.2, size=(int(rng.integers(1, 4)), 1)) for _ in range(STEPS)]
        for _ in range(SESSIONS)
    ]


def live_sessions(store: RedisServer) -> int:
    return int(redis.Redis.from_url(store.url).zcard("peephole:sessions"))


def check_and_report(
    kind: str,
    proxy: FaultProxy,
    replicas: list[Replica],
    store: RedisServer,
    fed: list[list[np.ndarray]],
    got: list[list[np.ndarray]],
    ids: list[str],
    stats: RetryStats,
    killer: Killer,
    seconds: float,
    sessions_before: int,
) -> None:
    with Client(replicas[1].url, timeout=60) as direct:
        seqs = [np.concatenate(chunks) for chunks in fed]
        whole = direct.predict(MG, seqs)
        for sid, x, y, outs in zip(ids, seqs, whole, got, strict=True):
            assert len(outs) == STEPS
            assert direct.attach(sid).offset == len(x)  # applied once each: no loss, no double
            np.testing.assert_allclose(np.concatenate(outs), y, atol=1e-5, rtol=0)
        orphans = live_sessions(store) - sessions_before - SESSIONS
        for sid in ids:
            direct.attach(sid, keep=False).delete()
    faults = {k: proxy.counts[k] for k in ("cut", "delayed", "late")}
    steps = sum(len(x) for x in seqs)
    print(
        f"\n[{kind}] {SESSIONS * STEPS} steps ({steps} time steps) over {SESSIONS} sessions in "
        f"{seconds:.1f} s; faults injected: {faults} over {proxy.counts['connections']} "
        f"connections; replica SIGKILLs: {killer.kills} (restarted; {proxy.counts['refused']} "
        f"connections refused while down); client retries: "
        f"{stats.total} {dict(stats.retries)}; stream reconnects: {stats.reconnects}; "
        f"extra sessions left by retried creates: {orphans}"
    )
    assert sum(faults.values()) > 0 and killer.kills == 1
    assert orphans == 0  # a retried create got the session its first attempt opened


def test_http_steps_exactly_once_under_faults(
    cluster: tuple[FaultProxy, list[Replica], RedisServer],
) -> None:
    proxy, replicas, store = cluster
    fed, progress = plans(1), Progress()
    before, proxy.counts = live_sessions(store), type(proxy.counts)()

    with Client(proxy.url, timeout=TIMEOUT, retries=PATIENT) as client:

        def feed(chunks: list[np.ndarray]) -> tuple[str, list[np.ndarray]]:
            s = client.session(MG, keep=True)
            outs = []
            for x in chunks:
                outs.append(s.step(x))
                progress.tick()
            assert s.offset == sum(len(x) for x in chunks)
            return s.id, outs

        t0 = time.monotonic()
        with (
            Killer(replicas[0], progress, SESSIONS * STEPS) as killer,
            ThreadPoolExecutor(SESSIONS) as pool,
        ):
            results = list(pool.map(feed, fed))
        seconds = time.monotonic() - t0
    ids, got = [r[0] for r in results], [r[1] for r in results]
    check_and_report(
        "HTTP", proxy, replicas, store, fed, got, ids, client.stats, killer, seconds, before
    )


def test_stream_exactly_once_under_faults(
    cluster: tuple[FaultProxy, list[Replica], RedisServer],
) -> None:
    proxy, replicas, store = cluster
    fed, progress = plans(2), Progress()
    before, proxy.counts = live_sessions(store), type(proxy.counts)()

    async def run(client: AsyncClient) -> list[tuple[str, list[np.ndarray]]]:
        async def feed(chunks: list[np.ndarray]) -> tuple[str, list[np.ndarray]]:
            s = await client.session(MG, keep=True)
            outs = []
            async for y in s.stream(chunks):
                outs.append(y)
                progress.tick()
            assert s.offset == sum(len(x) for x in chunks)
            return s.id, outs

        return await asyncio.gather(*(feed(chunks) for chunks in fed))

    async def main() -> tuple[list[tuple[str, list[np.ndarray]]], RetryStats]:
        async with AsyncClient(proxy.url, timeout=TIMEOUT, retries=PATIENT) as client:
            return await run(client), client.stats

    t0 = time.monotonic()
    with Killer(replicas[0], progress, SESSIONS * STEPS) as killer:
        results, stats = asyncio.run(main())
    seconds = time.monotonic() - t0
    ids, got = [r[0] for r in results], [r[1] for r in results]
    check_and_report(
        "WebSocket", proxy, replicas, store, fed, got, ids, stats, killer, seconds, before
    )
