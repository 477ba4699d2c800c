"""The registry's states (ready, draining, retired) and the batcher's unloaded queues.

Readers take one immutable snapshot: a request that took an engine keeps a working engine
after the version is unloaded, and the next reader sees the new view in one step.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.errors import Gone, ModelNotFound, ModelUnavailable
from app.inference.batcher import BatchingRunner
from app.inference.engine import Engine
from app.inference.registry import ModelRegistry
from app.inference.repository import load_version
from tests.repo import PLAIN, RepoModels


@pytest.fixture(scope="module")
def engines(models: RepoModels) -> dict[int, Engine]:
    return {v: Engine(load_version(models.repo / PLAIN / str(v), PLAIN, v), "cpu") for v in (1, 2)}


def test_states(engines: dict[int, Engine]) -> None:
    reg = ModelRegistry(engines.values())
    assert reg.get(PLAIN) is engines[2] and reg.default_version(PLAIN) == 2
    before = reg.snapshot
    assert reg.drain(PLAIN, 2, 0.0, 10.0, "api")
    assert not reg.drain(PLAIN, 2, 0.0, 10.0, "api")  # already draining
    assert before.ready[PLAIN][2] is engines[2]  # a published snapshot never changes
    assert reg.get(PLAIN) is engines[1] and reg.versions(PLAIN) == [1] and len(reg) == 1
    with pytest.raises(ModelNotFound, match="draining"):
        reg.get(PLAIN, 2)  # nothing new starts on it...
    assert reg.pinned(PLAIN, 2) is engines[2]  # ...its sessions keep stepping on it
    held = reg.pinned(PLAIN, 2)
    assert reg.retire(PLAIN, 2, 1.0, "its drain deadline passed") is engines[2]
    with pytest.raises(Gone, match="deadline"):
        reg.pinned(PLAIN, 2)
    x = np.zeros((1, 3, 2), np.float32)
    np.testing.assert_array_equal(held.run(x).y, engines[2].run(x).y)  # still usable
    with pytest.raises(ModelUnavailable) as e:
        reg.pinned(PLAIN, 7, retry_after=3)  # never held here: another replica may hold it
    assert e.value.status_code == 503 and e.value.headers["Retry-After"] == "3"
    reg.add(engines[2])  # loaded again: ready, the default, its sessions step again
    assert reg.get(PLAIN) is engines[2] and reg.pinned(PLAIN, 2) is engines[2]
    assert not reg.snapshot.retired
    assert reg.drain(PLAIN, 1, 0.0, 10.0, "api") and reg.undrain(PLAIN, 1)
    assert reg.versions(PLAIN) == [1, 2]


def test_forgotten_queue_drains(engines: dict[int, Engine]) -> None:
    """Calls queued on an engine that is unloaded still run on it; then its queue goes."""
    runner = BatchingRunner(1, max_size=4)
    engine = engines[1]
    x = np.random.default_rng(0).normal(size=(1, 20, 2)).astype(np.float32)

    async def go() -> list[np.ndarray]:
        calls = [asyncio.ensure_future(runner(engine, x, None, None)) for _ in range(6)]
        await asyncio.sleep(0)  # queued, the first batch in flight
        runner.forget(engine)
        assert id(engine) in runner._queues  # busy: kept until the queued calls ran
        out = [r.y for r in await asyncio.gather(*calls)]
        await asyncio.sleep(0)
        return out

    try:
        results = asyncio.run(go())
    finally:
        runner.close()
    assert id(engine) not in runner._queues
    for y in results:
        np.testing.assert_allclose(y, engine.run(x).y, atol=1e-6)
