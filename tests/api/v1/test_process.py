"""`python -m app` as a process: configuration from the environment, and a graceful SIGTERM
(the request in flight is answered, then the process exits cleanly)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.live import free_port
from tests.repo import LNSC, RepoModels


def accepted_connections(pid: int, port: int) -> int:
    """Connections to `port` that process `pid` has accepted (Linux: /proc), so that a test
    can wait for its request to be in the server rather than sleep for a guess."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01" and inode in inodes:
                count += 1
    return count


def wait_for_an_accepted_connection(pid: int, port: int) -> None:
    deadline = time.monotonic() + 30
    while accepted_connections(pid, port) == 0:
        assert time.monotonic() < deadline, "the request never reached the server"
        time.sleep(0.01)


def test_sigterm_lets_in_flight_requests_finish(models: RepoModels) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PEEPHOLE_MODEL_REPOSITORY": str(models.repo),
        "PEEPHOLE_PORT": str(port),
        "PEEPHOLE_PROVIDER": "cpu",
        "PEEPHOLE_LOG_LEVEL": "info",
        "PEEPHOLE_GRPC_PORT": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        result: dict[str, int] = {}
        body = {"inputs": [[[0.1, 0.2, 0.3]] * 30000], "return_sequences": False}

        def call() -> None:
            r = httpx.post(f"{url}/v1/models/{LNSC}/predict", json=body, timeout=60)
            result["status"] = r.status_code

        t = threading.Thread(target=call)
        t.start()
        wait_for_an_accepted_connection(proc.pid, port)  # the request is being parsed or run
        proc.send_signal(signal.SIGTERM)
        t.join(timeout=60)
        assert result.get("status") == 200
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.stdout.read() if proc.stdout else ""
    assert "Application shutdown complete" in out
    assert f"model {LNSC}/1 loaded on CPUExecutionProvider" in out
    assert "refusing model bad-sha/1" in out and "sha256" in out
    assert "refusing model bad-card/1" in out
    assert "refusing model bad-graph/1" in out and "ONNX Runtime cannot load" in out
