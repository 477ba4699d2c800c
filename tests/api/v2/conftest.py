"""Fixtures for the KServe v2 tests: the service tests' model repository and a live server,
plus a `tritonclient.http` client pointed at it (the client users really run)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import tritonclient.http as triton_http

from tests.live import LiveServer, make_settings
from tests.repo import RepoModels

MAX_BODY = 200_000


@pytest.fixture(scope="session")
def server(models: RepoModels) -> Iterator[LiveServer]:  # noqa: F811
    """No API keys; small limits so that 413s are cheap to provoke."""
    settings = make_settings(
        models.repo, max_batch_size=8, max_steps=2000, max_body_bytes=MAX_BODY, max_sessions=50
    )
    with LiveServer(settings) as s:
        yield s


@pytest.fixture()
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture()
def triton(server: LiveServer) -> Iterator[triton_http.InferenceServerClient]:
    c = triton_http.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield c
    c.close()
