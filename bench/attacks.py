"""What hostile or careless clients cost the server: memory, the answer, and /health/live.

    python bench/attacks.py            # the full table (15 MB bodies, 3,000 connections)
    python bench/attacks.py --quick    # smoke run: 1 MB bodies, 100 connections, limits
                                       # scaled down to meet the same refusals

One `python -m app` (1 worker, the shipped models, timeouts of 5 s so that the connection
attacks end soon; --quick: 1 s) is attacked one case at a time. For each case the table
gives the answer, the body size, the server's peak RSS growth over its RSS before the case
(VmHWM, reset per case through /proc/<pid>/clear_refs), that growth as a multiple of the
body, the RSS 3 s after the case over the RSS before it, and the latency of /health/live,
asked every 20 ms on a connection of its own while the case runs (p50 and max).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
MODEL = "mackey-glass"  # plain, 16 blocks, 1 input, 1 output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, timeout: float, limits: dict[str, str]) -> None:
        self.port = free_port()
        env = {**os.environ, **limits, "PYTHONPATH": str(ROOT), "PEEPHOLE_PORT": str(self.port),
               "PEEPHOLE_MODEL_REPOSITORY": str(ROOT / "models"), "PEEPHOLE_WORKERS": "1",
               "PEEPHOLE_PROVIDER": "cpu", "PEEPHOLE_LOG_LEVEL": "warning",
               "PEEPHOLE_HEADER_TIMEOUT_SECONDS": str(timeout),
               "PEEPHOLE_BODY_TIMEOUT_SECONDS": str(timeout),
               "PEEPHOLE_KEEPALIVE_SECONDS": str(timeout)}  # fmt: skip
        quiet = subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                                     stdout=quiet, stderr=quiet)  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self.get("/health/ready")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def get(self, path: str) -> tuple[int, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> int:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            c.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
            r = c.getresponse()
            r.read()
            return r.status
        except OSError:
            return 0  # the server closed the connection (e.g. after a 503 mid-body)

    def status(self, key: str) -> int:
        """VmRSS / VmHWM of the server, bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Prober(threading.Thread):
    """GET /health/live every 20 ms on its own keep-alive connection; latencies in ms."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.ms, self.stop = port, [], threading.Event()

    def run(self) -> None:
        c: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                c = c or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                c.request("GET", "/health/live")
                c.getresponse().read()
            except OSError:
                c = None
                continue
            self.ms.append((time.perf_counter() - t0) * 1e3)
            self.stop.wait(0.02)


@dataclass
class Row:
    attack: str
    answer: str = ""
    body: int = 0
    peak: int = 0
    after_ratio: float = 0.0
    health: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        mult = f"{self.peak / self.body:6.1f}x" if self.body else "     - "
        p50 = statistics.median(self.health) if self.health else float("nan")
        top = max(self.health) if self.health else float("nan")
        return (f"| {self.attack} | {self.answer} | {self.body / 1e6:.1f} MB | "
                f"{self.peak / 1e6:.0f} MB | {mult} | {self.after_ratio:.2f} | "
                f"{p50:.1f} / {top:.0f} ms |")  # fmt: skip


SETTLE = 3.0  # seconds after a case before "RSS after" is read (--quick: 1)
# --quick's bodies are about 1 MB and it opens 100 connections: these limits make it meet
# the same refusals as the full run (503 for bodies at once and connections, 413 for internals)
QUICK_LIMITS = {"PEEPHOLE_MAX_BODY_BYTES": str(5 << 18), "PEEPHOLE_MAX_CONNECTIONS": "64",
                "PEEPHOLE_MAX_RESPONSE_BYTES": str(4 << 20)}  # fmt: skip


def measure(srv: Server, attack: str, body: int, run: Callable[[], str]) -> Row:
    time.sleep(SETTLE / 3)
    base = srv.status("VmRSS")
    srv.reset_peak()
    probe = Prober(srv.port)
    probe.start()
    try:
        answer = run()
    finally:
        probe.stop.set()
        probe.join()
    peak = max(0, srv.status("VmHWM") - base)
    time.sleep(SETTLE)
    row = Row(attack, answer, body, peak, srv.status("VmRSS") / base, probe.ms)
    print(row, flush=True)
    return row


def counts(statuses: list[int]) -> str:
    out: dict[int, int] = {}
    for s in statuses:
        out[s] = out.get(s, 0) + 1
    return ", ".join(f"{n} x {s or 'closed'}" for s, n in sorted(out.items()))


async def hold(port: int, n: int, payload: bytes, seconds: float) -> list[int]:
    """n connections that send `payload` (reading meanwhile, as a browser does) and wait;
    the status each gets (0: closed without an answer, -2: still open at the end)."""

    async def send(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):  # the server may stop reading and answer
            writer.write(payload)
            await writer.drain()

    async def one() -> int:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return -1
        sending = asyncio.create_task(send(writer))
        try:
            line = await asyncio.wait_for(reader.readline(), seconds)
            return int(line.split()[1]) if line else 0
        except (TimeoutError, OSError, IndexError, ValueError):
            return -2
        finally:
            sending.cancel()
            writer.close()

    return list(await asyncio.gather(*(one() for _ in range(n))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small bodies, 100 conns")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it
    global SETTLE
    q = args.quick
    timeout = 1.0 if q else 5.0
    SETTLE = 1.0 if q else 3.0
    batch, steps = (16, 16_000) if q else (256, 14_600)  # zeros: 4 bytes a step, ~15 MB
    # --quick: the limits scaled down with the bodies, so that every refusal still shows
    limits = QUICK_LIMITS if q else {}
    rng = np.random.default_rng(0)
    srv = Server(timeout, limits)
    rows: list[Row] = []
    print(f"python -m app (1 worker, {MODEL}), RSS at start {srv.status('VmRSS') / 1e6:.0f} MB\n")
    print("| attack | answer | body | peak RSS growth | multiple of the body | RSS after / "
          "before | /health/live p50 / max |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    try:
        predict = f"/v1/models/{MODEL}/predict"
        sid = json.loads(_post_json(srv, "/v1/sessions", {"model": MODEL}))["session_id"]
        # warm-up: every route once, small
        srv.post(predict, b'{"inputs": [[[0.5]]]}')
        srv.post(f"/v1/sessions/{sid}/steps", b'{"inputs": [[0.5]]}')

        zeros = orjson.dumps({"inputs": [[[0]] * steps] * batch, "return_sequences": False})
        rows.append(measure(srv, f"/v1 predict, {batch} x {steps} zeros", len(zeros),
                            lambda: str(srv.post(predict, zeros))))  # fmt: skip
        numbers = np.round(rng.random((batch // 2, steps // 2)), 6).tolist()
        rand = orjson.dumps({"inputs": [[[v] for v in row] for row in numbers],
                             "return_sequences": False})  # fmt: skip
        rows.append(measure(srv, f"/v1 predict, {batch // 2} x {steps // 2} random 6-digit",
                            len(rand), lambda: str(srv.post(predict, rand))))  # fmt: skip
        chunk = orjson.dumps({"inputs": np.round(rng.random((100_000 // (10 if q else 1), 1)),
                                                 6).tolist()})  # fmt: skip
        rows.append(
            measure(
                srv,
                "/v1 steps, 100,000 random steps" if not q else "/v1 steps",
                len(chunk),
                lambda: str(srv.post(f"/v1/sessions/{sid}/steps", chunk)),
            )
        )
        cols = 29_296 if not q else 2_000
        v2 = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [batch, cols, 1],
                                       "data": [0] * (batch * cols)}],
                           "parameters": {"binary_data_output": True}})  # fmt: skip
        rows.append(measure(srv, f"/v2 JSON, {batch} x {cols} zeros", len(v2),
                            lambda: str(srv.post(f"/v2/models/{MODEL}/infer", v2))))  # fmt: skip
        t2 = 16_300 if not q else 4_000
        tensor = np.zeros((batch, t2, 1), np.float32).tobytes()
        head = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [batch, t2, 1],
                                         "parameters": {"binary_data_size": len(tensor)}}],
                             "parameters": {"binary_data_output": True}})  # fmt: skip
        rows.append(measure(srv, f"/v2 binary, {batch} x {t2} float32", len(head) + len(tensor),
                            lambda: str(srv.post(f"/v2/models/{MODEL}/infer", head + tensor,
                                                 {"Inference-Header-Content-Length":
                                                  str(len(head))}))))  # fmt: skip
        rows.append(measure(srv, "WebSocket message of the steps above", len(chunk),
                            lambda: _websocket(srv.port, sid, chunk)))  # fmt: skip

        def eight() -> str:
            out: list[int] = []
            threads = [threading.Thread(target=lambda: out.append(srv.post(predict, zeros)))
                       for _ in range(8)]  # fmt: skip
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return counts(out)

        rows.append(measure(srv, "8 of the zeros predicts at once", 8 * len(zeros), eight))
        t_int = 8000 if not q else 800
        ints = orjson.dumps({"inputs": [[[0.5]] * t_int] * batch,
                             "return_internals": True})  # fmt: skip
        rows.append(measure(srv, f"predict with internals ({batch} x {t_int})", len(ints),
                            lambda: str(srv.post(predict, ints))))  # fmt: skip
        big = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (120 << 20 if not q
                                                                      else 4 << 20)  # fmt: skip
        rows.append(measure(srv, f"{len(big) >> 20} MB header", 0,
                            lambda: counts(asyncio.run(hold(srv.port, 1, big, 30)))))  # fmt: skip
        n = 3000 if not q else 100
        rows.append(measure(srv, f"{n} connections that send nothing", 0,
                            lambda: counts(asyncio.run(hold(srv.port, n, b"", 3 * timeout)))
                            + f"; fds after: {srv.fds()}"))  # fmt: skip
        stall = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
        n = 500 if not q else 50
        rows.append(
            measure(
                srv,
                f"{n} bodies that stall",
                0,
                lambda: counts(asyncio.run(hold(srv.port, n, stall, 3 * timeout))),
            )
        )
    finally:
        srv.stop()
    changed = ", ".join(f"{k}={v}" for k, v in limits.items())
    print(f"\n{len(rows)} cases; header, body and idle timeouts {timeout:g} s, "
          f"{changed or 'every other limit at its PEEPHOLE_* default'}")  # fmt: skip
    return 0


def _post_json(srv: Server, path: str, doc: object) -> bytes:
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    c.request("POST", path, orjson.dumps(doc), {"Content-Type": "application/json"})
    return c.getresponse().read()


def _websocket(port: int, sid: str, message: bytes) -> str:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/v1/sessions/{sid}/stream", max_size=None) as ws:
        ws.send(message.decode())
        reply = json.loads(ws.recv(timeout=120))
    return "200" if "outputs" in reply else str(reply.get("status"))


if __name__ == "__main__":
    sys.exit(main())
