"""Fixtures: every session store, opened fresh per test.

`stores` is parametrised over the kinds (memory, lmdb in process, lmdb seen from two
processes, Redis on a real redis-server on a free loopback port), so a test written once runs
against each. Stores are opened inside the test's event loop (`stores.run(body)`) and closed
there, since a Redis client belongs to the loop it was first used in.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from app.sessions.base import SessionStore
from tests.sessions.remote import Remote, Spec, SplitStore, open_store

KINDS = ["memory", "lmdb", "lmdb-2proc", "redis"]
SHARED = ["lmdb", "redis"]  # stores that several processes share


@pytest.fixture(scope="session")
def remote() -> Iterator[Remote]:
    """The second process, shared by the tests that need one."""
    r = Remote()
    yield r
    r.close()


class Stores:
    """Opens stores of one kind; `run(body)` runs `body(self)` and then closes them all."""

    def __init__(self, kind: str, tmp: Path, request: pytest.FixtureRequest) -> None:
        self.kind, self.tmp, self.request = kind, tmp, request
        self._opened: list[SessionStore] = []
        self._path = tmp / "lmdb"
        self._prefix = f"t{uuid.uuid4().hex[:12]}:"

    def spec(self, max_sessions: int = 100) -> Spec:
        """The same store for every call in one test (same path or prefix), any capacity."""
        kind = "lmdb" if self.kind.startswith("lmdb") else self.kind
        if kind == "redis":
            url = self.request.getfixturevalue("redis_server").url  # tests/conftest.py
            return Spec("redis", max_sessions, url=url, prefix=self._prefix)
        return Spec(kind, max_sessions, path=str(self._path))

    def remote(self) -> Remote:
        r: Remote = self.request.getfixturevalue("remote")
        return r

    async def open(self, max_sessions: int = 100) -> SessionStore:
        spec = self.spec(max_sessions)
        store = open_store(spec)
        if self.kind == "lmdb-2proc":
            remote = self.remote()
            store = SplitStore(store, remote, await remote.call("open", spec))
        await store.start()
        self._opened.append(store)
        return store

    def run(self, body: Callable[[Stores], Awaitable[None]]) -> None:
        async def main() -> None:
            try:
                await body(self)
            finally:
                for s in reversed(self._opened):
                    await s.close()

        asyncio.run(main())


@pytest.fixture(params=KINDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    return Stores(request.param, tmp_path, request)


@pytest.fixture(params=SHARED)
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    return Stores(request.param, tmp_path, request)
