"""The memory store's columnar table (app/sessions/table.py) beyond the store contract: rows
grow and are reused, the last chunk lives in columns or aside, the expiry heap gives exact
order with lazy entries, ids are keyed one-to-one, and the row-state seam with the batcher
gives what per-session copies give."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from app.config import Settings
from app.dataplane import DataPlane
from app.errors import SessionNotFound
from app.inference.batcher import BatchingRunner
from app.inference.registry import ModelRegistry
from app.inference.repository import scan_repository
from app.sessions.base import Session, inputs_digest
from app.sessions.memory import MemorySessionStore, index_key
from app.sessions.table import RowState, SessionTable
from tests.repo import PLAIN, RepoModels


def make(sid: str, k: float = 0.0, ttl: int = 60, shape: tuple[int, ...] = (4,)) -> Session:
    state = {"c": np.full(shape, k, np.float32), "h": np.full(3, -k, np.float32)}
    return Session(session_id=sid, model="m", version=1, ttl_seconds=ttl, state=state)


def test_rows_grow_and_are_reused() -> None:
    async def go() -> None:
        store = MemorySessionStore(max_sessions=10_000)
        for k in range(3000):  # past the first 1024 rows twice: every column is copied over
            await store.create(make(f"s{k}", k=k))
        for k in range(0, 3000, 2):
            await store.delete(f"s{k}")
        for k in range(1500):
            await store.create(make(f"t{k}", k=-k))
        (table,) = store._tables
        assert table.live == 3000 and table._used == 3000  # the freed rows were used again
        for k in range(1, 11, 2):
            await store.delete(f"s{k}")
        assert store.count_pinned("m", 1) == 2995 and store.count_pinned("m", 2) == 0
        for k in range(1, 11, 2):
            await store.create(make(f"s{k}", k=k))
        for k in range(1, 3000, 2):
            got = await store.get(f"s{k}")
            assert float(got.state["c"][0]) == k and float(got.state["h"][2]) == -k
        assert float((await store.get("t1499")).state["c"][3]) == -1499
        assert await store.count() == 3000

    asyncio.run(go())


def test_last_chunk_in_columns_or_aside() -> None:
    """One step of outputs with a sha256 digest and no internals is kept in columns; anything
    else aside; either way it reads back exactly, and changing kind leaves nothing behind."""

    async def go() -> None:
        store = MemorySessionStore(max_sessions=10)
        await store.create(make("a"))
        (table,) = store._tables
        x1, x5 = np.ones((1, 2), np.float32), np.ones((5, 2), np.float32)
        y1, y5 = np.full((1, 2), 0.3, np.float32), np.arange(10, dtype=np.float32).reshape(5, 2)
        cases = [(x1, y1, None, 0), (x5, y5, None, 1), (x1, y1, {"g": [1.0]}, 1),
                 (x1, y1, None, 0), (x1, np.full((1, 3), 2.0, np.float32), None, 1)]  # fmt: skip
        for x, y, internals, aside in cases:
            async with store.locked("a") as s:
                s.last_offset, s.last_digest, s.last_outputs = s.offset, inputs_digest(x), y
                s.last_internals = internals
                s.offset += x.shape[0]
            got = await store.get("a")
            assert got.last_digest == inputs_digest(x) and got.last_internals == internals
            assert got.last_outputs is not None and got.last_outputs.dtype == np.float32
            np.testing.assert_array_equal(got.last_outputs, y)
            assert len(table._aside) == aside
        async with store.locked("a") as s:
            s.forget_last_chunk()
        assert (await store.get("a")).last_outputs is None and not table._aside

    asyncio.run(go())


def test_a_new_layout_moves_the_session() -> None:
    async def go() -> None:
        store = MemorySessionStore(max_sessions=10)
        await store.create(make("a", k=1.0))
        async with store.locked("a") as s:
            s.state = {"c": np.full((2, 2), 5.0, np.float32), "h": np.zeros(3, np.float32)}
            s.offset = 7
        got = await store.get("a")
        assert got.state["c"].shape == (2, 2) and float(got.state["c"][1, 1]) == 5.0
        assert got.offset == 7 and await store.count() == 1
        assert [t.live for t in store._tables] == [0, 1]

    asyncio.run(go())


def test_hex_ids_are_keyed_one_to_one() -> None:
    """The service's ids are keyed by their 16 bytes; an id that differs only in case, or any
    other id, is another session."""
    lower, upper = "ab" * 16, "AB" * 16
    assert index_key(lower) == bytes.fromhex(lower) and index_key(upper) == upper
    assert index_key("ab cd" + "0" * 27) == "ab cd" + "0" * 27

    async def go() -> None:
        store = MemorySessionStore(max_sessions=10)
        for k, sid in enumerate((lower, upper, "0" * 32, "0" * 31 + " ")):
            await store.create(make(sid, k=k))
        for k, sid in enumerate((lower, upper, "0" * 32, "0" * 31 + " ")):
            assert float((await store.get(sid)).state["c"][0]) == k
        assert await store.count() == 4

    asyncio.run(go())


def test_expiry_heap_order_with_lazy_entries() -> None:
    """Rows come out of the heap in the order of their actual expiries, to the millisecond,
    after some were extended (no new entry) and some moved earlier (a new one); stale
    entries never outnumber the rows for long, and the soonest expiry is exact."""
    rng = random.Random(0)
    t0 = 1_000_000.0
    table = SessionTable("m", 1, (("c", (4,)), ("h", (3,))), epoch=t0)
    expires: dict[int, float] = {}
    for k in range(3000):
        s = make(f"s{k}")
        s.expires_at = t0 + rng.uniform(0, 100)
        expires[table.add(f"s{k}", s)] = s.expires_at  # type: ignore[index]
    for row in rng.sample(sorted(expires), 1500):  # used since: later
        expires[row] += rng.uniform(0, 100)
        table.extend(row, expires[row])
    for _ in range(5):  # moved earlier, again and again: new entries, the old ones stale
        for row in rng.sample(sorted(expires), 1000):
            expires[row] -= rng.uniform(0, 1)
            table.extend(row, expires[row])
    assert len(table._heap) <= 2 * 3000 + 1024
    for row in rng.sample(sorted(expires), 300):
        table.remove(row)
        del expires[row]
    assert table.soonest() == min(expires.values())
    out = []
    while (row := table.pop_expired(t0 + 300)) is not None:
        out.append(row)
    assert sorted(out) == sorted(expires)  # each live row once, none of the removed
    ms = [int((expires[r] - t0) * 1000) for r in out]
    assert ms == sorted(ms)
    assert table.pop_expired(t0 + 300) is None and table.soonest() is None


def test_state_stays_in_the_row_until_asked_for() -> None:
    """`locked()` yields the row (RowState): a tensor changed in place is written back, the
    rest is untouched, and the session leaves the block with a state of its own."""

    async def go() -> None:
        store = MemorySessionStore(max_sessions=10)
        await store.create(make("a", k=2.0))
        async with store.locked("a") as s:
            assert isinstance(s.state, RowState)
            s.state["c"][1] = 9.0
        held = s
        assert type(held.state) is dict
        got = await store.get("a")
        assert (
            got.state["c"].tolist() == [2.0, 9.0, 2.0, 2.0]
            and got.state["h"].tolist() == [-2.0] * 3
        )
        async with store.locked("a") as s:
            s.state = {"c": np.zeros(4, np.float32), "h": np.zeros(3, np.float32)}
        assert held.state["c"].tolist() == [2.0, 9.0, 2.0, 2.0]  # its own, not the row's
        with pytest.raises(SessionNotFound):
            async with store.locked("a") as s:
                await store.delete("a")
                await store.create(make("a", k=7.0))  # may take the same row
        assert "c" not in s.state or float(s.state["c"][0]) != 7.0  # never the new session's

    asyncio.run(go())


def test_steps_gathered_from_rows_equal_steps_one_by_one(models: RepoModels) -> None:
    """64 sessions stepped at once (their states gathered from the table into one batch) give
    the outputs and states of the same steps run one session at a time, unbatched."""
    registry = ModelRegistry.build(scan_repository(models.repo), "cpu", 1)
    settings = Settings(model_repository=models.repo, provider="cpu", _env_file=None)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((64, 5, registry.get(PLAIN).input_size)).astype(np.float32)

    async def run(max_size: int) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]], list[int]]:
        sizes: list[int] = []
        runner = BatchingRunner(1, lambda engine, batch, seconds: sizes.append(batch),
                                max_size=max_size)  # fmt: skip
        dp = DataPlane(registry, MemorySessionStore(1000), runner, settings)
        ids = [(await dp.create_session(PLAIN)).session_id for _ in range(64)]
        outs: list[list[np.ndarray]] = [[] for _ in ids]
        for t in range(5):
            steps = await asyncio.gather(*(dp.step(sid, xs[k, t : t + 1], t)
                                           for k, sid in enumerate(ids)))  # fmt: skip
            for k, r in enumerate(steps):
                outs[k].append(r.outputs)
        states = [(await dp.get_session(sid)).state for sid in ids]
        runner.close()
        return [np.concatenate(o) for o in outs], states, sizes

    batched_y, batched_states, batched_sizes = asyncio.run(run(64))
    assert max(batched_sizes) > 1  # they did share runs
    alone_y, alone_states, alone_sizes = asyncio.run(run(1))
    assert max(alone_sizes) == 1
    for a, b in zip(batched_y, alone_y, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    for a, b in zip(batched_states, alone_states, strict=True):
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6)
