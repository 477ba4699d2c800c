"""Streams benchmark: gRPC ModelStreamInfer and the WebSocket vs /v1 HTTP steps vs TorchServe.

    python bench/grpc_bench.py --peers DIR      # every case, the TorchServe peer included
    python bench/grpc_bench.py --rounds 3       # repeat; each ratio with its range
    python bench/grpc_bench.py                  # without TorchServe (no peers' folder given)
    python bench/grpc_bench.py --quick          # smoke run (no peer, 1 s per case)

Cases, all against ONE `python -m app` serving HTTP and gRPC (the model of bench/http_bench.py,
the TorchServe peer's size), each WARMUP s not reported, then DURATION s:
  stream  64 sequences, each on its own ModelStreamInfer stream (spread over CHANNELS HTTP/2
          connections), one step per message ([1, 1, 1] x = 1.0, output y), the next sent
          when the answer is back; the first message starts the sequence. Every answer's
          `offset` parameter must be the previous one + 1 (no step lost or applied twice).
  ws      the same workload over the WebSocket: 64 sessions (created first), each on its own
          WS /v1/sessions/{id}/stream, one step per text message ({"inputs": [[1.0]]}), the
          next sent when the answer is back, every answer's offset the previous one + 1
          (bench/ws_client.py: a lean asyncio Protocol client, frames masked once, so that
          the figure is the server's; its own CPU per step is printed beside it).
  steps   the same workload over /v1 HTTP: one-step POST /v1/sessions/{id}/steps over 64
          sessions, 64 connections (bench/http_bench.py's case, wrk, same body as the peer).
  peer    TorchServe's stateful case (its own bench.sh: 64 sequences x 1 step, 64 conns),
          when the peers' folder is given (--peers DIR or PEERS_DIR; bench/peers.py drives it).
  unary   ModelInfer, 1 sequence x 10 steps (the peer's T=10 values), 16 calls in flight,
          against POST /v2/models/lstm/infer with the same tensor as JSON (wrk, 16 conns).
The gRPC and WebSocket clients are Python (on uvloop; gRPC requests serialised once, WebSocket
frames masked once); wrk is C.
So that a client's cost does not come out of the server's, the server (and the peer) run on
the first half of the cores and every client on the other half (--no-pin: no pinning). Next
to steps/s each line gives the server's CPU time per step (all its processes and threads),
the measure that moves least on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import http_bench  # noqa: E402  (the HTTP harness: wrk, the model, CPU accounting)
from http_bench import LUA, Result, free_port, pin_tree, tree_cpu  # noqa: E402
from peers import Peer, run_peer  # noqa: E402

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
INFER = "/inference.GRPCInferenceService/ModelInfer"
T10 = [0.9, 1.0, 1.1, 0.95, 0.9, 1.0, 1.05, 1.1, 1.0, 0.9]  # the peer's T=10 body
WS_STEP = '{"inputs": [[1.0]]}'  # one step per WebSocket message, the body of the steps case


# -- clients (run as subprocesses: python bench/grpc_bench.py --client ...) -----------------


@dataclass
class Tally:
    ok: int = 0
    errors: int = 0
    bad_offsets: int = 0


def _requests_for(seq: int) -> tuple[bytes, bytes]:
    """(first, next) ModelInferRequest bytes of one sequence: one step x = 1.0, output y."""
    from app.api.grpc._proto import grpc_service_pb2 as pb

    def make(start: bool) -> bytes:
        r = pb.ModelInferRequest(model_name="lstm", id=str(seq))
        r.inputs.add(name="x", datatype="FP32", shape=[1, 1, 1])
        r.raw_input_contents.append(b"\x00\x00\x80\x3f")  # 1.0f, little-endian
        r.outputs.add(name="y")
        r.parameters["sequence_id"].uint64_param = seq
        if start:
            r.parameters["sequence_start"].bool_param = True
        return r.SerializeToString()

    return make(True), make(False)


def _t10_request() -> bytes:
    import numpy as np

    from app.api.grpc._proto import grpc_service_pb2 as pb

    r = pb.ModelInferRequest(model_name="lstm")
    r.inputs.add(name="x", datatype="FP32", shape=[1, 10, 1])
    r.raw_input_contents.append(np.asarray(T10, "<f4").tobytes())
    return r.SerializeToString()


async def _client(kind: str, target: str, n: int, channels: int, warmup: float,
                  seconds: float, base: int) -> None:  # fmt: skip
    import grpc

    from app.api.grpc._proto import grpc_service_pb2 as pb

    chans = [grpc.aio.insecure_channel(target) for _ in range(max(1, min(channels, n)))]
    tally, lat = Tally(), []
    phase = 0  # 0 warm-up, 1 measured, 2 stop

    async def stream(i: int) -> None:
        first, step = _requests_for(base + i)
        call = chans[i % len(chans)].stream_stream(STREAM)()
        body, offset = first, 0
        while phase < 2:
            t0 = time.perf_counter()
            await call.write(body)
            raw = await call.read()
            body = step
            r = pb.ModelStreamInferResponse.FromString(raw)
            if phase == 1:
                lat.append(time.perf_counter() - t0)
            if r.error_message:
                tally.errors += 1
                continue
            got = r.infer_response.parameters["offset"].int64_param
            tally.bad_offsets += got != offset + 1
            offset = got
            tally.ok += phase == 1
        await call.done_writing()

    async def unary(i: int) -> None:
        body = _t10_request()
        call = chans[i % len(chans)].unary_unary(INFER)
        while phase < 2:
            t0 = time.perf_counter()
            try:
                await call(body)
            except grpc.aio.AioRpcError:
                tally.errors += 1
                continue
            if phase == 1:
                lat.append(time.perf_counter() - t0)
                tally.ok += 1

    tasks = [asyncio.ensure_future((stream if kind == "stream" else unary)(i))
             for i in range(n)]  # fmt: skip
    await asyncio.sleep(warmup)
    phase, tally.ok, t_start = 1, 0, time.perf_counter()
    print("START", flush=True)
    await asyncio.sleep(seconds)
    phase, elapsed = 2, time.perf_counter() - t_start
    done = {"ok": tally.ok, "seconds": elapsed}
    await asyncio.gather(*tasks, return_exceptions=False)
    lat.sort()
    done |= {"errors": tally.errors, "bad_offsets": tally.bad_offsets,
             "p50_ms": 1e3 * lat[len(lat) // 2] if lat else 0.0,
             "p99_ms": 1e3 * lat[int(len(lat) * 0.99)] if lat else 0.0}  # fmt: skip
    print("RESULT " + json.dumps(done), flush=True)
    for c in chans:
        await c.close()


async def _ws_client(target: str, n: int, warmup: float, seconds: float) -> None:
    """The WebSocket case on bench/ws_client.py (the lean client: the server's figure)."""
    import ws_client

    ids = [http_bench.post(target + "/v1/sessions", {"model": "lstm", "ttl_seconds": 3600})
           ["session_id"] for _ in range(n)]  # fmt: skip
    ws = target.replace("http", "ws", 1)
    urls = [f"{ws}/v1/sessions/{sid}/stream" for sid in ids]
    done = await ws_client.load(urls, WS_STEP.encode(), warmup, seconds,
                                lambda: print("START", flush=True))  # fmt: skip
    print("RESULT " + json.dumps(done), flush=True)


def client_main(a: argparse.Namespace) -> int:
    import uvloop

    if a.client == "ws":
        uvloop.run(_ws_client(a.target, a.n, a.warmup, a.duration))
    else:
        uvloop.run(_client(a.client, a.target, a.n, a.channels, a.warmup, a.duration, a.base))
    return 0


# -- the run ----------------------------------------------------------------------------------


def drain(proc: subprocess.Popen[bytes]) -> list[str]:
    """Read the server's stderr as it comes (a full pipe would block its writes): lines."""
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append(raw.decode(errors="replace").rstrip())

    threading.Thread(target=read, daemon=True).start()
    return lines


def grpc_case(kind: str, server_pid: int, target: str, n: int, channels: int,
              warmup: int, duration: int) -> Result:  # fmt: skip
    """Run a client subprocess; the server's CPU is sampled when it starts measuring and ends."""
    base = int(time.time() * 1000) % 10**9 * 1000  # fresh sequence ids each case
    cmd = [sys.executable, str(Path(__file__)), "--client", kind, "--target", target,
           "--n", str(n), "--channels", str(channels), "--warmup", str(warmup),
           "--duration", str(duration), "--base", str(base)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)  # fmt: skip
    assert proc.stdout is not None
    cpu0 = cpu1 = 0.0
    out = {}
    for line in proc.stdout:
        if line.startswith("START"):
            cpu0 = tree_cpu(server_pid)
        elif line.startswith("RESULT "):
            cpu1 = tree_cpu(server_pid)
            out = json.loads(line.split(" ", 1)[1])
    if proc.wait(timeout=60) or not out:
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"gRPC {kind} client failed:\n{err}")
    steps = out["ok"]
    r = Result(steps / out["seconds"], out["p50_ms"], out["p99_ms"],
               out["errors"] + out["bad_offsets"], steps)  # fmt: skip
    r.cpu_us = (cpu1 - cpu0) / max(1, steps) * 1e6
    if "client_cpu_us" in out:
        CLIENT_CPU[id(r)] = out["client_cpu_us"]
    return r


def v2_case(svc: http_bench.Service, work: Path, conns: int, warmup: int, duration: int) -> Result:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 10, 1], "data": T10}]}
    (work / "v2_t10.json").write_text(json.dumps(body))
    env = {"BODY_FILE": str(work / "v2_t10.json")}
    url = svc.url + "/v2/models/lstm/infer"
    if warmup:
        http_bench.wrk(url, conns, warmup, LUA / "predict.lua", env)
    cpu0 = tree_cpu(svc.proc.pid)
    r = http_bench.wrk(url, conns, duration, LUA / "predict.lua", env)
    r.cpu_us = (tree_cpu(svc.proc.pid) - cpu0) / max(1, r.requests) * 1e6
    return r


CLIENT_CPU: dict[int, float] = {}  # a Result's client CPU per step, where the client says


def line(name: str, case: str, r: Result) -> None:
    client = CLIENT_CPU.get(id(r))
    print(f"  {name:<26} {case:<36} {r.rps:9.1f} steps/s  p50 {r.p50:7.2f} ms  "
          f"p99 {r.p99:7.2f} ms  errors {r.errors}  cpu {r.cpu_us:6.0f} us/step"
          + ("" if client is None else f"  (client {client:.0f} us/step)"), flush=True)  # fmt: skip


def ratios(rounds: list[dict[str, Result]], num: str, den: str, label: str) -> None:
    pairs = [(r[num], r[den]) for r in rounds if num in r and den in r]
    if not pairs:
        return
    rs = [a.rps / b.rps for a, b in pairs]
    cpu = [b.cpu_us / a.cpu_us for a, b in pairs if a.cpu_us > 0]
    errs = sum(a.errors for a, _ in pairs)
    cells = "  ".join(f"{x:.2f}x" for x in rs)
    cpu_cells = "  ".join(f"{x:.2f}x" for x in cpu)
    print(f"  {label:<44} {cells}   median {statistics.median(rs):.2f}x   {num} errors {errs}"
          f"   | server CPU per step {den}/{num}: {cpu_cells}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: no peer, 1 s per case")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0, help="0 = the service's default")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--channels", type=int, default=4, help="HTTP/2 connections of the streams")
    ap.add_argument(
        "--peers",
        default=os.environ.get("PEERS_DIR"),
        metavar="DIR",
        help="the peers' folder, for TorchServe's stateful case (else $PEERS_DIR)",
    )
    ap.add_argument("--no-pin", action="store_true")
    # client mode (internal)
    ap.add_argument("--client", choices=["stream", "unary", "ws"], help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--base", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        return client_main(a)
    if not shutil.which("wrk"):
        print("wrk is not installed: nothing measured (apt-get install wrk)")
        return 0 if a.quick else 1
    cores = sorted(os.sched_getaffinity(0))
    if a.quick:
        a.peers, a.duration, a.warmup, a.rounds = None, 1, 1, 1
    server_cpus = set(cores[: max(1, len(cores) // 2)])
    client_cpus = set(cores[len(cores) // 2 :]) or set(cores)
    pin = not a.no_pin and len(cores) > 1
    workers = a.workers or max(1, len(server_cpus if pin else cores) // 2)
    work = Path(tempfile.mkdtemp(prefix="peephole-grpc-bench-"))
    peer = Peer(Path(a.peers).resolve() / "torchserve") if a.peers else None
    rounds: list[dict[str, Result]] = []
    try:
        http_bench.write_bodies(work)
        repo = http_bench.build_repository(work)
        print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {a.duration} s per "
              f"case after {a.warmup} s warm-up; Peephole with {workers} worker(s); "
              + (f"server on CPUs {sorted(server_cpus)}, clients on {sorted(client_cpus)}"
                 if pin else "no pinning"))  # fmt: skip
        if pin:
            os.sched_setaffinity(0, client_cpus)  # wrk and the clients inherit it
        for n in range(a.rounds):
            print(f"\nround {n + 1}/{a.rounds}")
            r: dict[str, Result] = {}
            if peer is not None:
                got = run_peer(peer, a.warmup, a.duration, server_cpus if pin else None)
                if "steps" in got:
                    r["TorchServe"] = got["steps"]
            gport = free_port()
            svc = http_bench.peephole(repo, workers, PEEPHOLE_GRPC_PORT=str(gport))
            log = drain(svc.proc)
            try:
                if pin:
                    pin_tree(svc.proc.pid, server_cpus)
                target = f"127.0.0.1:{gport}"
                res = http_bench.run_cases(svc, work, ["steps"], a.warmup, a.duration,
                                           {"steps": a.sequences})  # fmt: skip
                r["HTTP steps"] = res["steps"]
                r["gRPC stream"] = grpc_case("stream", svc.proc.pid, target, a.sequences,
                                             a.channels, a.warmup, a.duration)  # fmt: skip
                line("Peephole gRPC", f"ModelStreamInfer, {a.sequences} sequences",
                     r["gRPC stream"])  # fmt: skip
                r["WebSocket"] = grpc_case("ws", svc.proc.pid, svc.url, a.sequences, 1,
                                           a.warmup, a.duration)  # fmt: skip
                line("Peephole WebSocket", f"1 step per message, {a.sequences} sessions",
                     r["WebSocket"])  # fmt: skip
                r["REST v2"] = v2_case(svc, work, 16, a.warmup, a.duration)
                line("Peephole /v2 REST", "infer T=10, 16 conns", r["REST v2"])
                r["gRPC unary"] = grpc_case("unary", svc.proc.pid, target, 16, 1, a.warmup,
                                            a.duration)  # fmt: skip
                line("Peephole gRPC", "ModelInfer T=10, 16 in flight", r["gRPC unary"])
            finally:
                svc.close()
                ours = [ln for ln in log if "peephole.grpc" in ln]
                if ours:  # what the gRPC endpoint logged (errors only at this log level)
                    print("  gRPC server log:\n    " + "\n    ".join(ours[-10:]))
            rounds.append(r)
        print("\nratios (steps/s over steps/s, same round)")
        ratios(rounds, "gRPC stream", "HTTP steps", "stream / HTTP /v1 steps (goal >= 2x)")
        ratios(rounds, "gRPC stream", "TorchServe", "stream / TorchServe stateful (goal >= 3x)")
        ratios(rounds, "gRPC unary", "REST v2", "ModelInfer / /v2 REST T=10 (goal >= 1x)")
        ratios(rounds, "WebSocket", "TorchServe", "WebSocket / TorchServe stateful (goal >= 3x)")
        ratios(rounds, "WebSocket", "HTTP steps", "WebSocket / HTTP /v1 steps")
    finally:
        if peer is not None:
            peer.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
