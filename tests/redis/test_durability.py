"""PEEPHOLE_REDIS_MIN_REPLICAS: a change no replica confirmed is a 503 that leaves nothing
half-applied to retry around; once a replica holds changes, they are acknowledged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from app.config import Settings
from app.errors import StoreUnavailable
from app.sessions.base import Session
from app.sessions.redis import RedisSessionStore
from tests.live import free_port
from tests.redis.topology import RedisProcess, wait_for

pytestmark = pytest.mark.redis


def _session(sid: str) -> Session:
    return Session(sid, "m", 1, 60, {"h": np.zeros(4, np.float32)})


def test_unconfirmed_changes_are_503_and_confirmed_ones_are_acknowledged(tmp_path: Path) -> None:
    master = RedisProcess(tmp_path / "master", free_port()).start()
    replica = RedisProcess(tmp_path / "replica", free_port(), "--replicaof", "127.0.0.1",
                           str(master.port))  # fmt: skip
    url = f"redis://127.0.0.1:{master.port}/0"
    settings = Settings(session_store="redis", redis_url=url, redis_min_replicas=1,
                        redis_wait_timeout_seconds=0.2, _env_file=None)  # fmt: skip

    async def go() -> None:
        store = RedisSessionStore.from_settings(settings)
        with pytest.raises(StoreUnavailable) as e:  # no replica: nobody confirms
            await store.create(_session("lonely"))
        assert e.value.status_code == 503 and e.value.headers["Retry-After"] == "1"
        assert "0 of the 1 Redis replicas" in e.value.detail
        assert await store.count() == 0  # the unconfirmed create was taken back
        replica.start()
        # In sync as the master sees it: its own WAIT is answered by the replica.
        wait_for(lambda: master.cli("wait", "1", "200") == "1", 20, "the replica in sync")
        await store.close()
        # A patient store, so a loaded machine's slow ack is not mistaken for a lost one.
        store = RedisSessionStore.from_settings(
            settings.model_copy(update={"redis_wait_timeout_seconds": 5.0})
        )
        made = await store.create(_session("kept"))
        async with store.locked(made.session_id) as s:
            s.offset = 3
        assert (await store.get("kept")).offset == 3
        await store.close()

    try:
        asyncio.run(go())
        # The replica holds what was acknowledged.
        assert replica.cli("hget", "peephole:s:kept", "offset") == "3"
    finally:
        replica.kill()
        master.kill()
