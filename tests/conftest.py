"""Fixtures every test directory shares: the exported model repository and a real Redis.

Built once per test session (not once per directory). Servers are in tests/live.py, the
repository's models and helpers in tests/repo.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.live import RedisServer
from tests.repo import RepoModels, build_repository

if TYPE_CHECKING:
    from training.lnsc.nets import Nets


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> RepoModels:
    """The test repository (tests/repo.py): plain, lnsc and the broken versions."""
    return build_repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def rivest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Nets]:
    """The dopamine model (LSTM + frozen TD critic) after a few online blocks, exported once:
    tests/lnsc checks and serves it, the /ui page shows it (training it twice cost seconds)."""
    import numpy as np

    from training.lnsc.export import NAME, export_network
    from training.lnsc.nets import Nets
    from training.lnsc.network import Knobs
    from training.lnsc.protocol import stack, training_block

    nets = Nets.fresh(0, "export-check", [0], Knobs())
    rng = np.random.default_rng(0)
    for _ in range(3):
        nets.block(*stack([training_block(rng)]))
    repo = tmp_path_factory.mktemp("rivest-models")
    training = {"task": NAME, "seed": 0, "data": {}, "weights": {"theta": nets.theta[0].tolist()}}
    path = export_network(repo, nets.dims, nets.theta[0], nets.w_critic[0], 0.98, training)
    return path, nets


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
