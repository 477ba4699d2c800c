"""What the lmdb store adds to the contract: batched sweeps, crashes, restarts, a full map."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import threading
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import lmdb
import numpy as np
import pytest

import app.sessions.lmdb as lmdb_store
from app.errors import SessionNotFound, StoreUnavailable
from app.sessions.base import Sweeper
from app.sessions.lmdb import LMDBSessionStore
from tests.sessions.test_contract import make


def test_a_mass_expiry_is_swept_in_batches_that_requests_slot_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10,000 sessions expire together: the sweep removes them in batches of 64, each its
    own write transaction, and changes of a live session run between the batches."""

    async def go() -> None:
        store = LMDBSessionStore(tmp_path, 20_000, sweep_seconds=3600)
        for k in range(10_000):
            await store.create(make(f"old{k}", ttl=1))
        await store.create(make("live", ttl=3600))
        later = time.time() + 5
        monkeypatch.setattr(lmdb_store, "now", lambda: later)
        batches: list[int] = []
        steps_between: list[int] = []
        steps = 0

        def sweep(limit: int) -> int:
            steps_between.append(steps)
            n = store.sweep(limit)
            batches.append(n)
            return n

        async def stepper() -> None:
            nonlocal steps
            while True:
                async with store.locked("live") as s:
                    s.offset += 1
                steps += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(stepper())
        await asyncio.sleep(0)
        removed = await Sweeper(sweep, 3600).sweep_all()
        task.cancel()
        assert removed == 10_000 and max(batches) == 64 and len(batches) == 157
        # the live session was changed between (nearly) every two batches
        assert sum(b > a for a, b in zip(steps_between, steps_between[1:], strict=False)) >= 150
        assert await store.count() == 1
        await store.close()

    asyncio.run(go())


def _hold_the_write_lock(path: str, holding: Event) -> None:
    env = lmdb.open(path, max_dbs=3, sync=False)
    txn = env.begin(write=True)
    txn.put(b"shead", b"half-written", db=env.open_db(b"head", txn=txn))
    holding.set()
    time.sleep(120)  # killed here, inside the write transaction


def test_a_worker_killed_mid_write_leaves_a_working_store(tmp_path: Path) -> None:
    async def setup() -> None:
        store = LMDBSessionStore(tmp_path, 10)
        await store.create(make("a", k=1.0))
        await store.close()

    asyncio.run(setup())
    ctx = mp.get_context("spawn")
    holding = ctx.Event()
    proc = ctx.Process(target=_hold_the_write_lock, args=(str(tmp_path), holding))
    proc.start()
    assert holding.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)

    done: list[int] = []

    def after() -> None:
        async def go() -> None:
            store = LMDBSessionStore(tmp_path, 10)
            async with store.locked("a") as s:
                s.offset = 5
            done.append((await store.get("a")).offset)
            await store.create(make("b"))
            done.append(await store.count())
            await store.close()

        asyncio.run(go())

    t = threading.Thread(target=after, daemon=True)
    t.start()
    t.join(30)
    assert done == [5, 2]  # the dead writer's lock was recovered, its write never happened


def test_sessions_outlive_a_restart_on_a_kept_path(tmp_path: Path) -> None:
    async def go() -> None:
        first = LMDBSessionStore(tmp_path / "kept", 10)
        await first.create(make("a", k=3.0))
        async with first.locked("a") as s:
            s.offset = 4
        await first.close()
        second = LMDBSessionStore(tmp_path / "kept", 10)
        got = await second.get("a")
        assert got.offset == 4 and float(got.state["cell_states"][0]) == 3.0
        await second.close()

    asyncio.run(go())
    assert (tmp_path / "kept" / "data.mdb").exists()


def test_a_private_store_removes_its_directory(tmp_path: Path) -> None:
    async def go() -> Path:
        store = LMDBSessionStore(None, 10)
        await store.create(make("a"))
        assert store.path.is_dir()
        await store.close()
        return store.path

    assert not asyncio.run(go()).exists()


def test_stores_on_one_path_share_one_environment(tmp_path: Path) -> None:
    """LMDB forbids opening a path twice in one process; two stores there share it."""

    async def go() -> None:
        a = LMDBSessionStore(tmp_path, 10)
        b = LMDBSessionStore(tmp_path, 10)
        await a.create(make("x"))
        await a.close()
        assert (await b.get("x")).session_id == "x"
        await b.close()

    asyncio.run(go())


def test_a_full_map_is_a_503_and_deleting_makes_room(tmp_path: Path) -> None:
    async def go() -> None:
        store = LMDBSessionStore(tmp_path, 100_000, map_bytes=1 << 20)
        big = {"cell_states": np.zeros(20_000, np.float32)}  # 80 kB each: the map holds ~10
        created = []
        with pytest.raises(StoreUnavailable) as e:
            for k in range(100):
                s = make(f"s{k}")
                s.state = big
                await store.create(s)
                created.append(s.session_id)
        assert "full" in e.value.detail and "PEEPHOLE_LMDB_MAP_BYTES" in e.value.detail
        assert 3 <= len(created) < 100
        with pytest.raises(SessionNotFound):
            await store.get(f"s{len(created)}")  # the refused create left nothing behind
        for sid in created[:3]:
            await store.delete(sid)
        s = make("again")
        s.state = big
        await store.create(s)
        assert await store.count() == len(created) - 2
        await store.close()

    asyncio.run(go())


def test_offsets_beyond_64_bits_are_refused_not_stored(tmp_path: Path) -> None:
    from app.errors import InvalidInput

    async def go() -> None:
        store = LMDBSessionStore(tmp_path, 10)
        await store.create(make("a", offset=2**64 - 1))
        with pytest.raises(InvalidInput):
            async with store.locked("a") as s:
                s.offset += 1
        assert (await store.get("a")).offset == 2**64 - 1
        await store.close()

    asyncio.run(go())


def _reader_slots(store: LMDBSessionStore) -> int:
    """Reader slots LMDB holds for this environment (one line per slot after a header)."""
    lines = store._env.readers().splitlines()
    return 0 if "no active readers" in lines[0] else len(lines) - 1


def test_changes_in_flight_and_refused_ones_hold_no_reader_slots(tmp_path: Path) -> None:
    """py-lmdb gives a reader slot back only when the Transaction object goes. A change in
    flight (suspended while the model runs) or a refused one (its traceback's frames, freed
    only by the garbage collector) must not keep one: under load they filled LMDB's 1024
    slots and every request got a 503 (MDB_READERS_FULL)."""
    import gc

    async def go() -> None:
        store = LMDBSessionStore(tmp_path, 1000)
        ids = [f"s{k}" for k in range(200)]
        for sid in ids:
            await store.create(make(sid))
        gate = asyncio.Event()

        async def change(sid: str, refuse: bool) -> None:
            async with store.locked(sid) as s:
                await gate.wait()  # as a step waits for its batch
                if refuse:
                    raise SessionNotFound("refused inside the change")
                s.offset += 1

        errors: list[BaseException] = []  # kept alive, as a server keeps them until collected

        async def run(sid: str, refuse: bool) -> None:
            try:
                await change(sid, refuse)
            except SessionNotFound as e:
                errors.append(e)

        tasks = [asyncio.create_task(run(sid, k % 2 == 1)) for k, sid in enumerate(ids)]
        await asyncio.sleep(0.05)
        assert _reader_slots(store) <= 2, "changes in flight hold reader slots"
        gate.set()
        await asyncio.gather(*tasks)
        assert len(errors) == 100
        assert _reader_slots(store) <= 2, "refused changes' tracebacks hold reader slots"
        assert (await store.get("s0")).offset == 1
        await store.close()

    gc.disable()  # the server collects rarely (app/__main__.py): nothing may rely on it
    try:
        asyncio.run(go())
    finally:
        gc.enable()
