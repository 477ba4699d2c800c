"""Fixtures of the /v1 tests: a real uvicorn server on the shared test repository."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.live import TRANSPORTS, LiveServer, make_settings
from tests.repo import RepoModels


@pytest.fixture(scope="session", params=TRANSPORTS)
def server(models: RepoModels, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """The main server: no API keys, default limits but small enough to test. Every test that
    uses it runs twice: on uvicorn's stock protocol and on the production transport."""
    settings = make_settings(models.repo, max_batch_size=8, max_steps=2000, max_body_bytes=200_000)
    with LiveServer(settings, transport=request.param) as s:
        yield s


@pytest.fixture()
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c
