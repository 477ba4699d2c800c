"""Fixtures of the Redis tests: real `python -m app` replicas sharing a real redis-server.

Replicas are separate processes (so one can be killed mid-stream) sharing one Redis
(`redis_server`, tests/conftest.py) and one model repository made by the real exporter.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.live import RedisServer, Replica
from training.export import export_model
from training.model import PeepholeConfig, PeepholeLSTM

MODEL = "lnsc"
# Acknowledge a change only once one replica holds it (WAIT), with room for a loaded machine.
DURABLE = {
    "PEEPHOLE_REDIS_MIN_REPLICAS": "1",
    "PEEPHOLE_REDIS_TIMEOUT_SECONDS": "2",
    "PEEPHOLE_REDIS_WAIT_TIMEOUT_SECONDS": "1",
}


def start_all(replicas: list[Replica]) -> list[Replica]:
    """Start every replica at once (start-up is mostly model loading) and wait for all."""
    with cf.ThreadPoolExecutor(max_workers=len(replicas)) as pool:
        return list(pool.map(Replica.start, replicas))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One lnsc model (2 blocks x 2 cells, Scan graph) made by the real exporter."""
    repo = tmp_path_factory.mktemp("redis-models")
    torch.manual_seed(7)
    cfg = PeepholeConfig(input_size=2, output_size=1, blocks=2, cells_per_block=2, init_range=0.5)
    export_model(
        PeepholeLSTM(cfg).eval(), repo, MODEL, task="test",
        training={"seed": 7, "data": {"generator": "random"}},
        input_names=["a", "b"], output_names=["y"], internals=False,
    )  # fmt: skip
    return repo


@pytest.fixture(scope="module")
def replicas(repo: Path, redis_server: RedisServer) -> Iterator[list[Replica]]:
    pair = [Replica(repo, redis_server.url).start(), Replica(repo, redis_server.url).start()]
    yield pair
    for r in pair:
        r.stop()
