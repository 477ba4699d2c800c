"""The shared-memory session table (app/sessions/shared.py): the SessionStore protocol, and
exclusive changes across processes (leases with wake-ups, revision checks)."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest

from app.errors import CapacityReached, SessionNotFound, StoreConflict
from app.sessions.base import Session
from app.sessions.shared import SharedSessionStore


def _session(sid: str, ttl: int = 60, k: float = 0.0) -> Session:
    state = {"cell_states": np.full(4, k, np.float32), "gates": np.full((2, 3), k, np.float32)}
    return Session(session_id=sid, model="m", version=1, ttl_seconds=ttl, state=state)


@pytest.fixture()
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SharedSessionStore(tmp_path, 50, state_floats=16, output_floats=8, sweep_seconds=0.1)
    yield s
    asyncio.run(s.close())


def test_create_get_delete_and_many_ids(store: SharedSessionStore) -> None:
    async def go() -> None:
        for k in range(50):
            await store.create(_session(f"id-{k}", k=k))
        assert await store.count() == 50
        for k in range(0, 50, 3):  # deletions shift probe runs back: the rest must stay found
            await store.delete(f"id-{k}")
        for k in range(50):
            if k % 3:
                s = await store.get(f"id-{k}")
                assert s.state["cell_states"][0] == k and s.state["gates"].shape == (2, 3)
                assert s.model == "m" and s.version == 1 and s.offset == 0
            else:
                with pytest.raises(SessionNotFound):
                    await store.get(f"id-{k}")
        assert await store.count() == 50 - 17

    asyncio.run(go())


def test_long_and_odd_ids(store: SharedSessionStore) -> None:
    async def go() -> None:
        for sid in ("x" * 200, "#hash-like", "ünïcode ✓", "a\0b", "7"):
            await store.create(_session(sid))
            assert (await store.get(sid)).session_id == sid
            async with store.locked(sid) as s:
                s.offset = 3
            assert (await store.get(sid)).offset == 3
            await store.delete(sid)

    asyncio.run(go())


def test_capacity_replace_and_expiry(store: SharedSessionStore) -> None:
    async def go() -> None:
        for k in range(50):
            await store.create(_session(f"c{k}", ttl=1 if k < 10 else 60))
        with pytest.raises(CapacityReached) as e:
            await store.create(_session("one-more"))
        assert e.value.status_code == 429 and int(e.value.headers["Retry-After"]) >= 1
        await store.create(_session("c20", k=5.0))  # same id: replaced, not counted
        assert (await store.get("c20")).state["cell_states"][0] == 5.0
        time.sleep(1.1)
        with pytest.raises(SessionNotFound):
            await store.get("c0")
        await store.create(_session("one-more"))  # expired ones made room
        assert await store.count() == 41

    asyncio.run(go())


def test_locked_writes_back_or_discards(store: SharedSessionStore) -> None:
    async def go() -> None:
        await store.create(_session("s"))
        async with store.locked("s") as s:
            s.offset = 2
            s.state = {"cell_states": np.ones(4, np.float32), "gates": np.ones((2, 3), np.float32)}
            s.last_offset, s.last_digest = 1, "ab" * 32
            s.last_outputs = np.arange(3, dtype=np.float32).reshape(3, 1)
        got = await store.get("s")
        assert got.offset == 2 and got.last_offset == 1 and got.last_digest == "ab" * 32
        np.testing.assert_array_equal(got.last_outputs, [[0], [1], [2]])
        with pytest.raises(RuntimeError):
            async with store.locked("s") as s:
                s.offset = 99
                raise RuntimeError("discard")
        assert (await store.get("s")).offset == 2
        # a big last chunk with internals goes to a spill file, and comes back
        async with store.locked("s") as s:
            s.last_outputs = np.ones((100, 1), np.float32)
            s.last_internals = {"cell_states": np.ones((100, 4), np.float32)}
        got = await store.get("s")
        assert got.last_outputs.shape == (100, 1) and got.last_internals is not None
        assert len(list(store.dir.glob("spill-*"))) == 1
        async with store.locked("s") as s:
            s.forget_last_chunk()
        assert not list(store.dir.glob("spill-*"))
        await store.delete("s")

    asyncio.run(go())


def test_concurrent_changes_in_one_process_are_serial(store: SharedSessionStore) -> None:
    async def go() -> None:
        await store.create(_session("s"))

        async def bump() -> None:
            async with store.locked("s") as s:
                await asyncio.sleep(0.001)
                s.offset += 1

        await asyncio.gather(*(bump() for _ in range(30)))
        assert (await store.get("s")).offset == 30

    asyncio.run(go())


def test_a_void_lease_is_caught_by_the_revision(tmp_path: Path) -> None:
    """Two stores in one process share the pid, so the lease does not part them: the write
    that comes second must fail with StoreConflict rather than lose the first."""

    async def go() -> None:
        a = SharedSessionStore(tmp_path, 10, state_floats=16)
        b = SharedSessionStore(tmp_path, 10, state_floats=16)
        await a.create(_session("s"))
        with pytest.raises(StoreConflict):
            async with a.locked("s") as sa:
                async with b.locked("s") as sb:
                    sb.offset = 1
                sa.offset = 2
        assert (await a.get("s")).offset == 1

    asyncio.run(go())


def _worker(directory: str, n: int, hold: float) -> None:
    async def go() -> None:
        store = SharedSessionStore(directory, 10, state_floats=16)
        await store.start()
        for _ in range(n):
            async with store.locked("shared") as s:
                await asyncio.sleep(hold)  # "inference" while holding the lease
                s.offset += 1
                s.state = {k: v + 1 for k, v in s.state.items()}
        await store.close()

    asyncio.run(go())


def test_changes_from_several_processes_are_exclusive(tmp_path: Path) -> None:
    async def create() -> None:
        await SharedSessionStore(tmp_path, 10, state_floats=16).create(_session("shared"))

    asyncio.run(create())
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), 40, 0.0005)) for _ in range(3)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert time.monotonic() - t0 < 30  # waiters were woken, not left to time out

    async def check() -> None:
        s = await SharedSessionStore(tmp_path, 10, state_floats=16).get("shared")
        assert s.offset == 120  # no change lost, none applied twice
        assert float(s.state["cell_states"][0]) == 120.0

    asyncio.run(check())
    assert not list(tmp_path.glob("notify-*"))  # each worker removed its socket
