"""`python -m app` as a user starts it: a real process on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.live import ROOT, free_port


class App:
    """`python -m app --port P ARGS` (environment: `env` over this one's), ready when built."""

    def __init__(self, repo: Path, *args: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "PEEPHOLE_MODEL_REPOSITORY": str(repo),
                    "PEEPHOLE_PROVIDER": "cpu", "PEEPHOLE_LOG_LEVEL": "info",
                    "PEEPHOLE_GRPC_PORT": "0", **env}  # fmt: skip
        cmd = [sys.executable, "-m", "app", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)  # fmt: skip
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{self.url}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"did not start:\n{self.stop()[-3000:]}")
            time.sleep(0.1)

    def workers(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        # uvicorn's spawn start method adds a resource tracker: keep the app workers only
        return [p for p in pids if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()]

    def stop(self) -> str:
        """SIGTERM, wait; the whole log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read() if self.proc.stdout else ""
