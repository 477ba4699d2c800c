"""The dynamic batcher: batched results equal unbatched ones, and a lone call does not wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest

from app.inference.batcher import BatchingRunner
from app.inference.engine import Engine, EngineResult
from app.inference.registry import ModelRegistry
from app.inference.repository import scan_repository
from tests.repo import LNSC, PLAIN, RepoModels

# max_wait of the timing tests: long beside a loaded box's scheduling hiccups (tenths of a
# second), so that "held" and "not held" stay apart there too
MAX_WAIT = 1.0


@pytest.fixture(scope="module")
def engines(models: RepoModels) -> dict[str, Engine]:
    reg = ModelRegistry.build(scan_repository(models.repo), "cpu", 1)
    return {PLAIN: reg.get(PLAIN), LNSC: reg.get(LNSC)}


class Recorder:
    """Observer: batch sizes of the runs."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, engine: Engine, batch: int, seconds: float) -> None:
        self.sizes.append(batch)


@pytest.fixture()
def runner() -> Iterator[tuple[BatchingRunner, Recorder]]:
    rec = Recorder()
    r = BatchingRunner(2, rec, max_size=64)
    yield r, rec
    r.close()


def _close(a: EngineResult, b: EngineResult) -> None:
    assert a.y.shape == b.y.shape
    np.testing.assert_allclose(a.y, b.y, rtol=0, atol=1e-6)
    assert a.states.keys() == b.states.keys()
    for k in a.states:
        np.testing.assert_allclose(a.states[k], b.states[k], rtol=0, atol=1e-6)


def _calls(engine: Engine, rng: np.random.Generator, n: int) -> list[tuple]:
    """Mixed calls: ragged predicts (with and without lengths), start states, single steps."""
    calls = []
    for k in range(n):
        kind = k % 4
        if kind == 0:  # a ragged predict batch
            lengths = rng.integers(1, 30, size=int(rng.integers(1, 4)))
            x = np.zeros((len(lengths), int(lengths.max()), engine.input_size), np.float32)
            for b, t in enumerate(lengths):
                x[b, :t] = rng.standard_normal((t, engine.input_size))
            calls.append((x, None, lengths))
        elif kind == 1:  # whole sequences of one length from zero state
            x = rng.standard_normal((2, int(rng.integers(1, 20)), engine.input_size)).astype(
                np.float32
            )
            calls.append((x, None, None))
        else:  # one session step from a state (as DataPlane.step calls it)
            x = rng.standard_normal((1, int(rng.integers(1, 3)), engine.input_size)).astype(
                np.float32
            )
            st = {k: rng.standard_normal(v.shape).astype(np.float32)
                  for k, v in engine.initial_state(1).items()}  # fmt: skip
            calls.append((x, st, None))
    return calls


@pytest.mark.parametrize("name", [PLAIN, LNSC])
def test_batched_equals_unbatched(engines: dict[str, Engine], runner, name: str) -> None:  # type: ignore[no-untyped-def]
    r, rec = runner
    engine = engines[name]
    calls = _calls(engine, np.random.default_rng(7), 40)

    async def all_at_once() -> list[EngineResult]:
        return await asyncio.gather(*(r(engine, x, st, ln) for x, st, ln in calls))

    results = asyncio.run(all_at_once())
    assert max(rec.sizes) > 1, "the concurrent calls were not coalesced"
    assert sum(rec.sizes) == sum(x.shape[0] for x, _, _ in calls)
    for (x, st, ln), got in zip(calls, results, strict=True):
        _close(got, engine.run(x, st, ln))
        assert got.y.flags.c_contiguous


def test_max_size_splits_batches(engines: dict[str, Engine]) -> None:
    rec = Recorder()
    r = BatchingRunner(1, rec, max_size=5)
    engine = engines[PLAIN]
    xs = [np.full((1, 3, engine.input_size), k, np.float32) for k in range(12)]

    async def go() -> list[EngineResult]:
        return await asyncio.gather(*(r(engine, x, None, None) for x in xs))

    try:
        results = asyncio.run(go())
    finally:
        r.close()
    assert max(rec.sizes) <= 5 and sum(rec.sizes) == 12
    for x, got in zip(xs, results, strict=True):
        _close(got, engine.run(x))


def test_internals_run_alone_and_exactly(engines: dict[str, Engine], runner) -> None:  # type: ignore[no-untyped-def]
    r, _ = runner
    engine = engines[PLAIN]
    x = np.random.default_rng(1).standard_normal((2, 5, engine.input_size)).astype(np.float32)

    async def go() -> tuple[EngineResult, EngineResult]:
        return await asyncio.gather(r(engine, x, None, None, True), r(engine, x, None, None))

    with_internals, plain = asyncio.run(go())
    assert with_internals.internals is not None and plain.internals is None
    ref = engine.run(x, None, None, True)
    for k, v in ref.internals.items():
        np.testing.assert_allclose(with_internals.internals[k], v, atol=1e-6)
    _close(plain, engine.run(x))


def test_errors_reach_every_caller(engines: dict[str, Engine], runner) -> None:  # type: ignore[no-untyped-def]
    r, _ = runner
    engine = engines[PLAIN]
    bad = np.zeros((1, 2, engine.input_size + 1), np.float32)  # ONNX Runtime refuses the width

    async def go() -> list[object]:
        return await asyncio.gather(r(engine, bad, None, None), return_exceptions=True)

    (out,) = asyncio.run(go())
    assert isinstance(out, Exception)


def test_a_lone_call_does_not_wait_for_max_wait(engines: dict[str, Engine]) -> None:
    """max_wait only holds partial batches while the model is busy; idle, a call runs now."""
    rec = Recorder()
    r = BatchingRunner(1, rec, max_size=64, max_wait_ms=MAX_WAIT * 1000)
    engine = engines[PLAIN]
    x = np.zeros((1, 1, engine.input_size), np.float32)

    async def lone() -> list[float]:
        times = []
        for _ in range(5):
            await asyncio.sleep(0.02)  # the previous call is done: the model is idle
            t0 = time.perf_counter()
            await r(engine, x, None, None)
            times.append(time.perf_counter() - t0)
        return times

    try:
        times = asyncio.run(lone())
    finally:
        r.close()
    assert rec.sizes == [1] * 5
    assert max(times) < MAX_WAIT / 2, times  # a held call would take the whole max_wait


def test_max_wait_refills_the_batch_of_concurrent_clients(engines: dict[str, Engine]) -> None:
    """After a batch of 8, calls trickling in one by one are held (up to max_wait) until 8
    wait again; a lone client's calls (previous batch: 1) are never held."""
    rec = Recorder()
    r = BatchingRunner(1, rec, max_size=64, max_wait_ms=MAX_WAIT * 1000)
    engine = engines[PLAIN]
    x = np.zeros((1, 1, engine.input_size), np.float32)

    async def trickle() -> float:
        await asyncio.gather(*(r(engine, x, None, None) for _ in range(8)))  # one run of 8
        later = []
        for _ in range(8):
            later.append(asyncio.ensure_future(r(engine, x, None, None)))
            await asyncio.sleep(0.002)
        await asyncio.gather(*later)
        t0 = time.perf_counter()
        for _ in range(3):  # a lone client now: held once at most (previous batch 8), then not
            await r(engine, x, None, None)
        return time.perf_counter() - t0

    try:
        lone = asyncio.run(trickle())
    finally:
        r.close()
    assert rec.sizes[:2] == [8, 8], rec.sizes
    # held once (about MAX_WAIT), not three times as a batcher that always waits would
    assert rec.sizes[2:] == [1, 1, 1] and lone < 1.5 * MAX_WAIT, (rec.sizes, lone)


class _Echo:
    """An engine stand-in whose y is its input: lets a test put infinity in one caller's y."""

    name, version, input_size = "echo", 1, 1

    def initial_state(self, batch: int) -> dict[str, np.ndarray]:
        return {"s": np.zeros((batch, 2), np.float32)}

    def run(self, x, states=None, lengths=None, internals=False):  # type: ignore[no-untyped-def]
        st = states if states is not None else self.initial_state(x.shape[0])
        return EngineResult(x.copy(), {k: v + 1 for k, v in st.items()})


def test_one_non_finite_caller_fails_alone() -> None:
    from app.dataplane import _check_finite
    from app.errors import InvalidInput

    r = BatchingRunner(1, None, max_size=64)
    engine = _Echo()
    xs = [np.full((1, 2, 1), v, np.float32) for v in (1.0, np.inf, 2.0)]

    async def go() -> list[EngineResult]:
        return await asyncio.gather(*(r(engine, x, None, None) for x in xs))  # type: ignore[arg-type]

    try:
        ok1, bad, ok2 = asyncio.run(go())
    finally:
        r.close()
    assert not (ok1.finite or bad.finite or ok2.finite)  # the batch held an infinity
    _check_finite(ok1)  # checked one by one: these pass
    _check_finite(ok2)
    with pytest.raises(InvalidInput):
        _check_finite(bad)

    r = BatchingRunner(1, None, max_size=64)
    try:
        fine = asyncio.run(_all_finite(r, engine))
    finally:
        r.close()
    assert all(res.finite for res in fine)


async def _all_finite(r: BatchingRunner, engine: _Echo) -> list[EngineResult]:
    xs = [np.full((1, 2, 1), v, np.float32) for v in (1.0, 2.0)]
    return await asyncio.gather(*(r(engine, x, None, None) for x in xs))  # type: ignore[arg-type]
