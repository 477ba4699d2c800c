"""The session store contract (app/sessions/base.py), held against every store.

Each test runs once per kind: memory, lmdb, lmdb seen from two processes (creates, deletes
and counts in the other process), Redis. What a test shows for one store it shows for all.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from app.errors import CapacityReached, SessionNotFound, StoreConflict
from app.sessions.base import Session, SessionStore, inputs_digest
from tests.sessions.conftest import Stores
from tests.sessions.remote import change


def make(sid: str, ttl: int = 60, k: float = 0.0, offset: int = 0) -> Session:
    state = {
        "cell_states": np.full(4, k, np.float32),
        "gates": (np.arange(6, dtype=np.float32).reshape(2, 3) + k),
    }
    return Session(session_id=sid, model="m", version=3, ttl_seconds=ttl, state=state,
                   offset=offset)  # fmt: skip


def same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == np.float32 and a[name].shape == b[name].shape
        np.testing.assert_array_equal(a[name], b[name])


def test_create_and_get(stores: Stores) -> None:
    async def body(st: Stores) -> None:
        store = await st.open()
        sent = make("a", k=0.1, offset=5)
        t0 = time.time()
        created = await store.create(sent)
        assert created.session_id == "a" and created.offset == 5
        assert t0 - 1 <= created.expires_at - 60 <= time.time() + 1
        got = await store.get("a")
        assert (got.model, got.version, got.offset, got.ttl_seconds) == ("m", 3, 5, 60)
        same_state(got.state, sent.state)
        assert got.last_offset is None and got.last_outputs is None
        got.state["cell_states"][:] = 9  # a snapshot: changing it changes nothing stored
        got.offset = 99
        again = await store.get("a")
        assert again.offset == 5 and float(again.state["cell_states"][0]) == np.float32(0.1)
        assert isinstance(store, SessionStore)

    stores.run(body)


def test_unknown_ids_are_not_found(stores: Stores) -> None:
    async def body(st: Stores) -> None:
        store = await st.open()
        with pytest.raises(SessionNotFound):
            await store.get("nope")
        with pytest.raises(SessionNotFound):
            async with store.locked("nope"):
                pass
        with pytest.raises(SessionNotFound):
            await store.delete("nope")

    stores.run(body)


def test_locked_read_modify_write(stores: Stores) -> None:
    async def body(st: Stores) -> None:
        store = await st.open()
        await store.create(make("a"))
        async with store.locked("a") as s:
            assert s.offset == 0
            s.offset = 2
            s.state = {"cell_states": np.ones(4, np.float32), "gates": np.ones((2, 3), np.float32)}
        got = await store.get("a")
        assert got.offset == 2 and float(got.state["gates"][1, 2]) == 1.0
        with pytest.raises(RuntimeError):
            async with store.locked("a") as s:
                s.offset = 99
                s.state["cell_states"][:] = 7
                raise RuntimeError("the change is refused")
        got = await store.get("a")
        assert got.offset == 2 and float(got.state["cell_states"][0]) == 1.0  # discarded

    stores.run(body)


def test_retry_data_round_trips(stores: Stores) -> None:
    """What exactly-once retries need: the last chunk's offset, digest, outputs, internals."""

    async def body(st: Stores) -> None:
        store = await st.open()
        await store.create(make("a"))
        x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
        y = (np.arange(8, dtype=np.float32) / 3).reshape(4, 2)
        internals = {"cell_states": np.full((4, 2, 2), 0.25, np.float32),
                     "gates": {"input": np.full((4, 2), 0.5, np.float32)}}  # fmt: skip
        async with store.locked("a") as s:
            s.last_offset, s.last_digest, s.last_outputs = s.offset, inputs_digest(x), y
            s.last_internals = internals
            s.offset += 4
        got = await store.get("a")
        assert got.offset == 4 and got.last_offset == 0 and got.last_digest == inputs_digest(x)
        assert got.last_outputs is not None and got.last_outputs.dtype == np.float32
        np.testing.assert_array_equal(got.last_outputs, y)  # exact: a retry answers these bytes
        assert got.last_internals is not None
        np.testing.assert_array_equal(np.asarray(got.last_internals["cell_states"]), 0.25)
        np.testing.assert_array_equal(np.asarray(got.last_internals["gates"]["input"]), 0.5)
        async with store.locked("a") as s:
            s.forget_last_chunk()
        got = await store.get("a")
        assert got.last_offset is got.last_digest is got.last_outputs is got.last_internals is None

    stores.run(body)


def test_ttl_expiry_and_sliding_ttl(stores: Stores) -> None:
    """A session is gone TTL seconds after its last use, and every use pushes that back.

    The used ones live 2 s: each wait below is 1.1 s, so a use comes 0.9 s before the
    deadline it pushes back (room for a loaded box), and the second wait ends past the
    deadline they were created with."""

    async def body(st: Stores) -> None:
        store = await st.open(max_sessions=3)
        await store.create(make("idle", ttl=1))
        await store.create(make("used", ttl=2))
        await store.create(make("stepped", ttl=2))
        first = (await store.get("used")).expires_at
        await asyncio.sleep(1.1)
        assert (await store.get("used")).expires_at > first + 1.0  # get extends it
        async with store.locked("stepped") as s:  # a change extends it
            s.offset += 1
        await asyncio.sleep(1.1)  # 2.2 s after creation, 1.1 s after the last use
        with pytest.raises(SessionNotFound):
            await store.get("idle")
        assert (await store.get("used")).offset == 0
        assert (await store.get("stepped")).offset == 1
        assert await store.count() == 2
        # full again, but an expired session makes room without waiting for a sweep
        await store.create(make("new", ttl=60))
        await asyncio.sleep(2.1)  # "used" and "stepped" expire (the gets above extended them)
        made, created = await store.create_if_absent(make("used", ttl=60))  # expired: absent
        assert created and made.offset == 0 and made.ttl_seconds == 60
        await store.create(make("newest", ttl=60))
        assert await store.count() == 3

    stores.run(body)


def test_capacity_and_retry_after(stores: Stores) -> None:
    async def body(st: Stores) -> None:
        store = await st.open(max_sessions=3)
        for k, ttl in enumerate((30, 60, 90)):
            await store.create(make(f"s{k}", ttl=ttl))
        with pytest.raises(CapacityReached) as e:
            await store.create(make("one-more"))
        assert e.value.status_code == 429
        assert 25 <= int(e.value.headers["Retry-After"]) <= 30  # when the soonest one expires
        await store.create(make("s1", k=5.0))  # replacing a live id takes no new place
        assert float((await store.get("s1")).state["cell_states"][0]) == 5.0
        await store.delete("s0")
        await store.create(make("one-more"))
        assert await store.count() == 3
        with pytest.raises(CapacityReached):
            await store.create(make("two-more"))

    stores.run(body)


def test_delete_and_count(stores: Stores) -> None:
    async def body(st: Stores) -> None:
        store = await st.open()
        assert await store.count() == 0
        for k in range(5):
            await store.create(make(f"s{k}"))
        assert await store.count() == 5
        await store.delete("s2")
        assert await store.count() == 4
        with pytest.raises(SessionNotFound):
            await store.get("s2")
        with pytest.raises(SessionNotFound):
            await store.delete("s2")
        assert (await store.get("s3")).session_id == "s3"

    stores.run(body)


def test_delete_while_locked_is_never_undone(stores: Stores) -> None:
    async def body(st: Stores) -> None:
        store = await st.open()
        await store.create(make("a"))
        with pytest.raises(SessionNotFound):
            async with store.locked("a") as s:
                await store.delete("a")  # another request deletes it meanwhile
                s.offset += 1
        with pytest.raises(SessionNotFound):
            await store.get("a")  # the change did not bring it back
        assert await store.count() == 0

    stores.run(body)


def test_replace_while_locked_keeps_the_new_session(stores: Stores) -> None:
    """A change read from a session that is then replaced (same id: a v2 sequence starting
    over) must not land on the new one: the block fails or runs again on the new session."""

    async def body(st: Stores) -> None:
        store = await st.open()
        await store.create(make("a", k=1.0))
        with pytest.raises((SessionNotFound, StoreConflict)):
            async with store.locked("a") as s:
                await store.create(make("a", k=2.0, offset=7))
                s.offset += 1
                s.state = {n: v + 10 for n, v in s.state.items()}
        got = await store.get("a")
        assert got.offset == 7 and float(got.state["cell_states"][0]) == 2.0

    stores.run(body)


def test_replace_on_same_id(stores: Stores) -> None:
    async def body(st: Stores) -> None:
        store = await st.open()
        await store.create(make("a", k=1.0))
        async with store.locked("a") as s:
            s.offset = 3
            s.last_offset, s.last_outputs, s.last_digest = 2, np.ones((1, 1), np.float32), "d"
        await store.create(make("a", k=2.0, ttl=30))
        got = await store.get("a")
        assert got.offset == 0 and got.ttl_seconds == 30 and got.last_outputs is None
        assert float(got.state["cell_states"][0]) == 2.0
        assert await store.count() == 1

    stores.run(body)


def test_create_if_absent_keeps_a_live_session(stores: Stores) -> None:
    """The first create_if_absent of an id creates; later ones return the live session as it
    stands (its life extended), change nothing, and are never refused for capacity."""

    async def body(st: Stores) -> None:
        store = await st.open(max_sessions=2)
        made, created = await store.create_if_absent(make("a", k=1.0, offset=2, ttl=30))
        assert created and made.offset == 2
        async with store.locked("a") as s:
            s.offset, s.last_offset, s.last_digest = 3, 2, "d"
            s.last_outputs = np.full((1, 1), 0.5, np.float32)
        before = (await store.get("a")).expires_at
        await store.create(make("b"))  # full now
        got, created = await store.create_if_absent(make("a", k=5.0, ttl=60))
        assert not created and (got.offset, got.ttl_seconds, got.last_offset) == (3, 30, 2)
        assert float(got.state["cell_states"][0]) == 1.0 and got.expires_at >= before
        again = await store.get("a")
        assert again.offset == 3 and float(again.state["cell_states"][0]) == 1.0
        assert again.last_outputs is not None and float(again.last_outputs[0, 0]) == 0.5
        with pytest.raises(CapacityReached):
            await store.create_if_absent(make("c"))
        await store.delete("a")
        made, created = await store.create_if_absent(make("a", k=5.0))
        assert created and float((await store.get("a")).state["cell_states"][0]) == 5.0
        assert await store.count() == 2

    stores.run(body)


@pytest.mark.parametrize("stores", ["memory", "lmdb", "redis"], indirect=True)
def test_concurrent_create_if_absent_creates_once(stores: Stores) -> None:
    """20 concurrent create_if_absent of one id in one process, each with its own state: one
    creates, and all 20 answer with that one's session (two processes: the last test)."""

    async def body(st: Stores) -> None:
        store = await st.open()
        got = await asyncio.gather(*(store.create_if_absent(make("a", k=k)) for k in range(20)))
        (winner,) = [k for k, (_, created) in enumerate(got) if created]
        assert {float(s.state["cell_states"][0]) for s, _ in got} == {winner}
        assert float((await store.get("a")).state["cell_states"][0]) == winner

    stores.run(body)


def test_concurrent_lockers_never_overlap(stores: Stores) -> None:
    """30 concurrent changes of one session, each awaiting inside its block: they run one at
    a time here, and each lands exactly once."""

    async def body(st: Stores) -> None:
        store = await st.open()
        await store.create(make("a"))
        inside = 0
        most = 0

        async def one() -> None:
            nonlocal inside, most
            while True:
                try:
                    async with store.locked("a") as s:
                        inside += 1
                        most = max(most, inside)
                        await asyncio.sleep(0.002)
                        s.offset += 1
                        s.state = {n: v + 1 for n, v in s.state.items()}
                        inside -= 1
                    return
                except StoreConflict:  # (another process wrote first: run again)
                    continue

        await asyncio.gather(*(one() for _ in range(30)))
        got = await store.get("a")
        assert most == 1 and got.offset == 30
        assert float(got.state["cell_states"][0]) == 30.0

    stores.run(body)


def test_odd_and_long_ids(stores: Stores) -> None:
    async def body(st: Stores) -> None:
        store = await st.open()
        ids = ["x" * 2000, "x" * 2001, "#hash-like", "ünïcode ✓", "a\0b", "v2:m:1:u:42", "7"]
        for k, sid in enumerate(ids):
            await store.create(make(sid, k=k))
        assert await store.count() == len(ids)
        for k, sid in enumerate(ids):
            got = await store.get(sid)
            assert got.session_id == sid and float(got.state["cell_states"][0]) == k
            async with store.locked(sid) as s:
                s.offset = k
        for k, sid in enumerate(ids):
            assert (await store.get(sid)).offset == k
            await store.delete(sid)
        assert await store.count() == 0

    stores.run(body)


# -- stores that several processes share -------------------------------------------------------


def test_changes_from_two_processes_land_exactly_once(shared: Stores) -> None:
    """This process and another change one session at once, 60 times each: 120 land, in one
    serial order (the state adds up), whatever conflicts met on the way."""

    async def body(st: Stores) -> None:
        store = await st.open()
        await store.create(make("shared"))
        remote = st.remote()
        handle = await remote.call("open", st.spec())
        remote.start("changes", handle, "shared", 60)
        for _ in range(60):
            await change(store, "shared", hold=0.0005)
        await remote.finish()
        await remote.call("close", handle)
        got = await store.get("shared")
        assert got.offset == 120
        assert float(got.state["cell_states"][0]) == 120.0

    shared.run(body)


def test_a_stale_write_is_refused(shared: Stores) -> None:
    """Two processes read revision r; the second write must fail (StoreConflict), not lose
    the first."""

    async def body(st: Stores) -> None:
        store = await st.open()
        await store.create(make("a"))
        remote = st.remote()
        handle = await remote.call("open", st.spec())
        with pytest.raises(StoreConflict):
            async with store.locked("a") as s:
                await remote.call("changes", handle, "a", 1)  # the other process writes first
                s.offset += 100
        await remote.call("close", handle)
        assert (await store.get("a")).offset == 1

    shared.run(body)


def test_create_if_absent_from_two_processes_creates_once(shared: Stores) -> None:
    """This process and another create the same 150 ids at once, each with its own state:
    each id is created by exactly one of them, and holds that one's state."""

    async def body(st: Stores) -> None:
        store = await st.open(max_sessions=1000)
        remote = st.remote()
        handle = await remote.call("open", st.spec(1000))
        ids = [f"id{k}" for k in range(150)]
        remote.start("create_each", handle, [make(sid, k=2.0) for sid in ids])
        here = [(await store.create_if_absent(make(sid, k=1.0)))[1] for sid in ids]
        there = await remote.finish()
        await remote.call("close", handle)
        assert [a + b for a, b in zip(here, there, strict=True)] == [1] * len(ids)
        for sid, mine in zip(ids, here, strict=True):
            assert float((await store.get(sid)).state["cell_states"][0]) == (1.0 if mine else 2.0)

    shared.run(body)
