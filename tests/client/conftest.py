"""Fixtures for the client tests: a repository of shipped models, a real in-process server
(with an API key), and the client pointed at it -- `Client`, and `AsyncClient` driven from
the same test bodies through `Blocking`, so every test checks both.

The repository holds copies of shipped models (no training needed): `mackey-glass` versions
1 and 2 (the same graph; 2 is the default) and `trace-conditioning` (2 inputs, an lnsc
Scan graph with internals).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peephole import AsyncClient, AsyncSession, Client, Retry
from tests.live import LiveServer, make_settings

SHIPPED = Path(__file__).resolve().parents[2] / "models"
MG, TC = "mackey-glass", "trace-conditioning"
KEY = "client-test-key"
FAST = Retry(retries=3, backoff=0.01, max_backoff=0.1, budget=5)


def copy_model(repo: Path, name: str, version: int = 1, as_version: int | None = None) -> None:
    target = repo / name / str(as_version or version)
    shutil.copytree(SHIPPED / name / str(version), target)
    if as_version is not None:
        card = json.loads((target / "model.json").read_text())
        card["version"] = as_version
        (target / "model.json").write_text(json.dumps(card))


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("client-models")
    copy_model(repo, MG)
    copy_model(repo, MG, 1, as_version=2)
    copy_model(repo, TC)
    return repo


@pytest.fixture(scope="session")
def server(repo: Path) -> Iterator[LiveServer]:
    settings = make_settings(
        repo, api_keys=[KEY], max_batch_size=8, max_steps=2000, max_body_bytes=200_000
    )
    with LiveServer(settings) as s:
        yield s


class Blocking:
    """An AsyncClient (or AsyncSession) used like its sync twin: each call runs on an event
    loop in another thread; sessions, streams and context managers are wrapped the same way.
    It only translates calls: every behaviour under test is AsyncClient's own."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target, self._loop = target, loop

    def _run(self, awaitable: Any) -> Any:
        async def wait() -> Any:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wait(), self._loop).result(timeout=60)

    def _wrap(self, value: Any) -> Any:
        if inspect.isasyncgen(value):
            return self._iterate(value)
        if inspect.isawaitable(value):
            value = self._run(value)
        return Blocking(value, self._loop) if isinstance(value, AsyncSession) else value

    def _iterate(self, agen: Any) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr
        return lambda *a, **kw: self._wrap(attr(*a, **kw))

    def __enter__(self) -> Any:
        return self._wrap(self._target.__aenter__())

    def __exit__(self, *exc: Any) -> None:
        self._run(self._target.__aexit__(*exc))


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    """`connect(url, key, **kw)`: a Client, or an AsyncClient behind `Blocking`."""
    made: list[Any] = []

    def make(url: str, api_key: str | None = KEY, **kw: Any) -> Any:
        kw = {"timeout": 10, "retries": FAST, **kw}
        if request.param == "sync":
            made.append(c := Client(url, api_key, **kw))
            return c
        made.append(c := Blocking(_in_loop(loop, lambda: AsyncClient(url, api_key, **kw)), loop))
        return c

    yield make
    for c in made:
        c.close() if isinstance(c, Client) else c.aclose()


def _in_loop(loop: asyncio.AbstractEventLoop, make: Any) -> Any:
    """Build an asyncio object on `loop` (httpx.AsyncClient binds to the loop it runs on)."""

    async def build() -> Any:
        return make()

    return asyncio.run_coroutine_threadsafe(build(), loop).result(timeout=10)


@pytest.fixture()
def client(connect: Any, server: LiveServer) -> Any:
    return connect(server.url)
