"""Fixtures: a real redis-server on a free loopback port, and real `python -m app` replicas.

Replicas are separate processes (so one can be killed mid-stream) sharing one Redis and one
model repository made by the real exporter.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from tests.service.conftest import free_port
from training.export import export_model
from training.model import PeepholeConfig, PeepholeLSTM

if shutil.which("redis-server") is None:  # .ci/run installs it; say so loudly elsewhere
    pytest.fail("redis-server is not installed (apt-get install -y redis-server)", pytrace=False)

MODEL = "lnsc"


class RedisServer:
    """redis-server with append-only persistence in a temporary folder; stop/start keep data."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while subprocess.run(
            ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
        ).stdout.strip() != "PONG":
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # SIGTERM: flushes the append-only file
            self.proc.wait(timeout=20)
        self.proc = None


class Replica:
    """One `python -m app` process on its own port, using the Redis store."""

    def __init__(self, repo: Path, redis_url: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PEEPHOLE_MODEL_REPOSITORY": str(repo),
            "PEEPHOLE_PORT": str(self.port),
            "PEEPHOLE_SESSION_STORE": "redis",
            "PEEPHOLE_REDIS_URL": redis_url,
            "PEEPHOLE_PROVIDER": "cpu",
            "PEEPHOLE_REDIS_TIMEOUT_SECONDS": "0.5",
            "PEEPHOLE_LOG_LEVEL": "warning",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Replica:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app"], env=self.env, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/health/live", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"replica on {self.port} did not start")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


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
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    r = RedisServer(tmp_path_factory.mktemp("redis-data"))
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def replicas(repo: Path, redis_server: RedisServer) -> Iterator[list[Replica]]:
    pair = [Replica(repo, redis_server.url).start(), Replica(repo, redis_server.url).start()]
    yield pair
    for r in pair:
        r.stop()
