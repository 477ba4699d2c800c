"""Fixtures every test directory shares: the exported model repository and a real Redis.

Built once per test session (not once per directory). Servers are in tests/live.py, the
repository's models and helpers in tests/repo.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.live import RedisServer
from tests.repo import RepoModels, build_repository


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> RepoModels:
    """The test repository (tests/repo.py): plain, lnsc and the broken versions."""
    return build_repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server with append-only persistence on a free loopback port."""
    if shutil.which("redis-server") is None:  # .ci/run installs it; fail loudly elsewhere
        pytest.fail(
            "redis-server is not installed (apt-get install -y redis-server)", pytrace=False
        )
    r = RedisServer(tmp_path_factory.mktemp("redis-data"))
    r.start()
    yield r
    r.stop()
