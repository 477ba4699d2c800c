"""Real servers for the tests: uvicorn in a thread, redis-server and `python -m app` processes.

Everything listens on a free loopback port and is stopped by the fixture that started it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from app.config import Settings
from app.edge.server import server_options
from app.main import create_app

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TRANSPORTS = ("stock", "production")


class LiveServer:
    """uvicorn serving create_app(settings) in a thread.

    `transport`: "stock" is uvicorn's default protocol (what an embedding app gets),
    "production" the options of `python -m app` (app/edge/server.py: our httptools protocol
    with its connection limits, on uvloop). `uvicorn_options` override either.
    """

    def __init__(
        self,
        settings: Settings,
        transport: str = "stock",
        uvicorn_options: dict[str, Any] | None = None,
        **collaborators: Any,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.app = create_app(settings, **collaborators)
        port = free_port()
        if transport == "production":
            options = {**server_options(settings), "log_level": "warning"}
        else:
            assert transport == "stock", transport
            options = {"log_level": "warning", "ws_max_size": settings.max_body_bytes}
        options.update(uvicorn_options or {})
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, lifespan="on", **options)
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        # host:port of the gRPC endpoint when settings turn it on (make_settings leaves it off)
        self.grpc_target = f"127.0.0.1:{settings.grpc_port}" if settings.grpc_port else None
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)


def wait_until_unloaded(
    url: str, model: str, version: int, headers: Any = None, seconds: float = 30
) -> None:
    """Until /v1/repository says `version` of `model` is unloaded (its drain is over): what
    a test waits for, rather than a pause sized for a quiet box."""
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        while True:
            models = c.get("/v1/repository").json()["models"]
            entry = next(m for m in models if m["name"] == model)
            state = next(v["state"] for v in entry["versions"] if v["version"] == version)
            if state == "unloaded":
                return
            assert time.monotonic() < deadline, f"{model}/{version} still {state}"
            time.sleep(0.05)


def make_settings(repo: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "model_repository": repo,
        "provider": "cpu",
        "session_sweep_seconds": 0.2,
        "grpc_port": 0,  # off unless a test asks (every server on the default 8001 would clash)
        "_env_file": None,
    }
    return Settings(**{**base, **overrides})


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
        while (
            subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
            ).stdout.strip()
            != "PONG"
        ):
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
            "PEEPHOLE_GRPC_PORT": "0",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Replica:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app"], env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL
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
