"""A Redis master SIGKILLed while 50 sessions stream through two replicas: with
PEEPHOLE_REDIS_MIN_REPLICAS=1 no acknowledged step is lost or doubled, on a Redis Cluster
and on a Sentinel-managed master. Each test prints the unavailability a client saw."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.redis.conftest import DURABLE, MODEL, Replica, start_all
from tests.redis.streaming import Run, check_exactly_once, stream_many
from tests.redis.topology import LocalCluster, LocalSentinel, wait_for

pytestmark = pytest.mark.redis


def workload(sessions: int, steps: int, seed: int) -> tuple[list[np.ndarray], list[list[int]]]:
    """Sequences [steps, 2] and chunk sizes 1..4 that add up to `steps`, per session."""
    rng = np.random.default_rng(seed)
    seqs = [rng.normal(size=(steps, 2)).astype(np.float32) for _ in range(sessions)]
    sizes = []
    for _ in range(sessions):
        cut, left = [], steps
        while left:
            cut.append(int(min(left, rng.integers(1, 5))))
            left -= cut[-1]
        sizes.append(cut)
    return seqs, sizes


class KillAt:
    """Calls `kill` once when the acknowledged steps reach `at`, then `heal` in a thread."""

    def __init__(self, kill, heal, at: int = 0) -> None:  # type: ignore[no-untyped-def]
        self.at, self.kill, self.heal = at, kill, heal
        self.killed_at: float | None = None
        self.thread: threading.Thread | None = None

    def __call__(self, total: int) -> None:
        if self.killed_at is None and total >= self.at:
            self.kill()
            self.killed_at = time.monotonic()
            self.thread = threading.Thread(target=self.heal, daemon=True)
            self.thread.start()

    def since(self) -> float:
        assert self.killed_at is not None
        return time.monotonic() - self.killed_at

    def join(self) -> None:
        assert self.thread is not None, "the run ended before the kill"
        self.thread.join(timeout=60)


def report(
    capsys: pytest.CaptureFixture[str], what: str, run, killer: KillAt, **phases: float
) -> None:  # type: ignore[no-untyped-def]
    assert killer.killed_at is not None
    window, longest = run.window(killer.killed_at)
    failed = run.failures()
    steps = " ".join(f"{k} {v:.2f} s," for k, v in phases.items())
    with capsys.disabled():
        print(
            f"\n{what}: {len(run.ids)} sessions, {sum(run.acked)} steps acknowledged, "
            f"{len(run.attempts)} requests, {len(failed)} failed and retried "
            f"({len({a.session for a in failed})} sessions); after the SIGKILL: {steps} "
            f"every session served again {window:.2f} s (longest stall of one session "
            f"{longest:.2f} s); lost 0, doubled 0"
        )


def stream_through_a_kill(
    pair: list[Replica], sessions: int, steps: int, seed: int, killer: KillAt
) -> Run:
    """Stream `sessions` x `steps` through the pair while `killer` strikes; then every
    session must stand at its acknowledged steps with whole-predict outputs."""
    seqs, sizes = workload(sessions, steps, seed)
    killer.at = int(0.3 * sessions * steps)
    run = asyncio.run(stream_many([r.url for r in pair], MODEL, seqs, sizes, killer, 90))
    killer.join()
    assert run.failures(), "no client saw the failover: the test measured nothing"
    with pair[0].client() as c:
        check_exactly_once(c, MODEL, run, seqs)
    return run


def test_cluster_master_sigkill(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = LocalCluster(tmp_path / "cluster", node_timeout_ms=1000).start()
    env = {"PEEPHOLE_REDIS_MODE": "cluster", **DURABLE}
    pair = start_all([Replica(repo, cluster.url, **env) for _ in range(2)])
    try:
        victim = cluster.master_ports()[0]

        phases: dict[str, float] = {}

        def heal() -> None:
            # The replica is promoted; then the dead master comes back as its replica (as
            # a restarted pod would), so the shard has a replica to WAIT for again.
            wait_for(lambda: cluster.roles().get(victim) == "fail" and victim not in cluster.master_ports()
                     and len(cluster.master_ports()) == 3, 30, "the promotion", every=0.1)  # fmt: skip
            phases["replica promoted"] = killer.since()
            cluster.node(victim).start()
            cluster.wait_healthy()
            phases["old master back as its replica"] = killer.since()

        killer = KillAt(cluster.node(victim).kill, heal)
        run = stream_through_a_kill(pair, 50, 30, 1, killer)
        assert cluster.roles()[victim] == "slave", "the killed master is not back as a replica"
        report(capsys, "cluster failover", run, killer, **phases)
    finally:
        for r in pair:
            r.stop()
        cluster.stop()


def test_sentinel_master_sigkill(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    redis = LocalSentinel(tmp_path / "sentinel", replicas=2).start()
    env = {
        "PEEPHOLE_REDIS_MODE": "sentinel",
        "PEEPHOLE_REDIS_SENTINELS": redis.addresses,
        "PEEPHOLE_REDIS_MASTER_NAME": redis.name,
        **DURABLE,
    }
    pair = start_all([Replica(repo, "redis://ignored:1/0", **env) for _ in range(2)])
    try:
        first = redis.master_port()

        phases: dict[str, float] = {}

        def heal() -> None:  # the sentinels promote a replica; the other follows it
            wait_for(lambda: redis.master_port() != first, 30, "the promotion", every=0.1)
            phases["sentinels promoted a replica"] = killer.since()

        killer = KillAt(redis.by_port(first).kill, heal)
        run = stream_through_a_kill(pair, 20, 30, 2, killer)
        assert redis.master_port() != first
        report(capsys, "sentinel failover", run, killer, **phases)
    finally:
        for r in pair:
            r.stop()
        redis.stop()
