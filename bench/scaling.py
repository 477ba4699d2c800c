"""Capacity of the Redis-backed deployment, measured here and projected (docs/SCALING.md).

    python bench/scaling.py                 # everything, ~3 minutes on 2 cores
    python bench/scaling.py --quick         # smoke run (small counts, 2 s per HTTP case)
    python bench/scaling.py --json out.json # the figures as JSON too

What it measures, each against real redis-servers it starts on loopback ports:
1. Redis memory per session, for every shipped model: sessions created and stepped once
   (a 1-step chunk, as a once-a-second stream sends) through the real data plane and store;
   MEMORY USAGE of the session hashes, the index's share, and used_memory per session.
2. Redis commands, round trips and bytes per step (INFO commandstats / stats deltas), with
   the store's cache of its last writes (a client that stays on one replica), without it
   (a client that alternates replicas), and with WAIT for one replica
   (PEEPHOLE_REDIS_MIN_REPLICAS=1); Redis CPU per step (INFO cpu) and the step's latency.
3. Steps/s of one `python -m app` replica (one worker) over HTTP (wrk, one-step calls on 64
   sessions), with the in-process store, Redis, and Redis + WAIT, side by side.
4. Redis CPU per step vs a bare redis-py loop of the same writes and redis-benchmark's HSET:
   steps/s one Redis core sustains.
5. A refused create at 100 and at many live sessions (the cost must not grow).
Then the arithmetic for 10 million sessions stepping once a second. Absolute figures on a
shared machine are noise; the ratios measured side by side in one run are what we publish.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.config import Settings  # noqa: E402
from app.dataplane import DataPlane  # noqa: E402
from app.errors import CapacityReached  # noqa: E402
from app.inference.batcher import BatchingRunner  # noqa: E402
from app.inference.registry import ModelRegistry  # noqa: E402
from app.inference.repository import scan_repository  # noqa: E402
from app.sessions.base import Session  # noqa: E402
from app.sessions.redis import RedisSessionStore  # noqa: E402

MODELS = ROOT / "models"
LUA = ROOT / "bench" / "wrk"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A redis-server on a free loopback port (no persistence), optionally a replica."""

    def __init__(self, workdir: Path, replica_of: int | None = None) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "redis.log"
        cmd = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(self.log),
        ]
        if replica_of:
            cmd += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                if self.client.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def calls(self) -> dict[str, int]:
        return {
            k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in self.client.info("commandstats").items()
            if k not in ("cmdstat_info", "cmdstat_replconf", "cmdstat_ping")
        }

    def net(self) -> tuple[int, int]:
        s = self.client.info("stats")
        return int(s["total_net_input_bytes"]), int(s["total_net_output_bytes"])

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is not None:  # it died: say why
            print(
                f"redis-server on {self.port} exited {self.proc.returncode}:\n"
                + self.log.read_text()[-4000:],
                file=sys.stderr,
            )
        self.proc.kill()
        self.proc.wait()


@dataclass
class Usage:
    """Redis-side cost of `n` operations."""

    n: int
    calls: dict[str, int]
    cpu_s: float
    bytes_in: int
    bytes_out: int

    def per(self) -> dict[str, float]:
        return {k: v / self.n for k, v in sorted(self.calls.items())}


@contextmanager
def measure(server: Server, n_box: list[int]) -> Iterator[list[Usage]]:
    """Deltas of commands, CPU and bytes over the block; n_box[0] = operations done."""
    c0, t0, (i0, o0) = server.calls(), server.cpu(), server.net()
    out: list[Usage] = []
    yield out
    c1, t1, (i1, o1) = server.calls(), server.cpu(), server.net()
    calls = {k: v - c0.get(k, 0) for k, v in c1.items() if v != c0.get(k, 0)}
    out.append(Usage(n_box[0], calls, t1 - t0, i1 - i0, o1 - o0))


def dataplane(url: str, model_dir: Path, **store_kw: Any) -> tuple[DataPlane, RedisSessionStore]:
    settings = Settings(
        model_repository=model_dir,
        provider="cpu",
        session_store="redis",
        redis_url=url,
        max_sessions=10_000_000,
        _env_file=None,
        **store_kw,
    )
    registry = ModelRegistry.build(scan_repository(model_dir), "cpu", 1)
    store = RedisSessionStore.from_settings(settings)
    return DataPlane(registry, store, BatchingRunner(1), settings), store


def one_model(name: str, tmp: Path) -> Path:
    repo = tmp / f"repo-{name}"
    if not repo.exists():
        shutil.copytree(MODELS / name, repo / name)
    return repo


# -- 1. memory ---------------------------------------------------------------------------


async def memory_per_session(server: Server, tmp: Path, n: int) -> list[dict[str, Any]]:
    rows = []
    names = sorted(p.name for p in MODELS.iterdir() if p.is_dir())
    # The first model measured would also pay Redis's one-off allocations (script cache,
    # client structures): a discarded round of the first model goes before.
    for i, name in enumerate([names[0], *names]):
        prefix = f"mem{i}-{name}:"
        dp, store = dataplane(server.url, one_model(name, tmp), redis_prefix=prefix)
        engine = dp.model(name)
        before = int(server.client.info("memory")["used_memory"])
        rng = np.random.default_rng(0)
        ids = []
        for start in range(0, n, 200):
            made = await asyncio.gather(
                *(dp.create_session(name) for _ in range(min(200, n - start)))
            )
            ids += [s.session_id for s in made]
        for start in range(0, n, 200):
            await asyncio.gather(
                *(
                    dp.step(
                        sid, rng.normal(size=(1, engine.input_size)).astype(np.float32), offset=0
                    )
                    for sid in ids[start : start + 200]
                )
            )
        await store.close()  # its connections' buffers are not the sessions'
        dp.runner.close()
        after = int(server.client.info("memory")["used_memory"])
        sample = ids[:: max(1, n // 100)]
        hashes = [
            int(server.client.memory_usage(store.keys.session(s)[0], samples=0)) for s in sample
        ]
        index = int(server.client.memory_usage(store.keys.index(0), samples=0))
        state = sum(int(np.prod(s.shape)) for s in engine.state_specs) * 4
        if i == 0:
            continue
        rows.append(
            {
                "model": name,
                "state_bytes": state,
                "hash_bytes": statistics.mean(hashes),
                "index_bytes": index / n,
                "used_memory_per_session": (after - before) / n,
            }
        )
    return rows


# -- 2. commands, round trips, bytes per step ----------------------------------------------


async def per_step(
    url: str, server: Server, tmp: Path, steps: int, label: str, **store_kw: Any
) -> dict[str, Any]:
    dp, store = dataplane(
        url, one_model("mackey-glass", tmp), redis_prefix=f"step-{label}:", **store_kw
    )
    sessions = 64
    ids = [(await dp.create_session("mackey-glass")).session_id for _ in range(sessions)]
    offsets = dict.fromkeys(ids, 0)
    x = np.ones((1, 1), np.float32)
    latencies: list[float] = []

    async def stream(sid: str, k: int) -> None:
        for _ in range(k):
            t = time.perf_counter()
            await dp.step(sid, x, offset=offsets[sid])
            latencies.append(time.perf_counter() - t)
            offsets[sid] += 1

    await asyncio.gather(*(stream(s, 2) for s in ids))  # warm: scripts loaded, cache filled
    latencies.clear()
    box = [0]
    with measure(server, box) as got:
        t, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(stream(s, steps // sessions) for s in ids))
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        box[0] = sessions * (steps // sessions)
    u = got[0]
    await store.close()
    dp.runner.close()
    return {
        "case": label,
        "steps": u.n,
        "commands_per_step": u.per(),
        # Our calls: EVALSHA (a WAIT rides in its pipeline) and the HGETALL of an uncached read.
        "round_trips_per_step": (u.calls.get("evalsha", 0) + u.calls.get("hgetall", 0)) / u.n,
        "client_cpu_us_per_step": 1e6 * cpu / u.n,
        "redis_cpu_us_per_step": 1e6 * u.cpu_s / u.n,
        "bytes_in_per_step": u.bytes_in / u.n,
        "bytes_out_per_step": u.bytes_out / u.n,
        "steps_per_s_in_process": u.n / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
    }


# -- 3. one replica over HTTP ----------------------------------------------------------------


class Replica:
    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PEEPHOLE_MODEL_REPOSITORY": str(repo),
            "PEEPHOLE_PORT": str(self.port),
            "PEEPHOLE_PROVIDER": "cpu",
            "PEEPHOLE_WORKERS": "1",
            "PEEPHOLE_LOG_LEVEL": "warning",
            "PEEPHOLE_MAX_SESSIONS": "10000000",
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app"],
            env=full,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import httpx

        self.http = httpx.Client(base_url=self.url, timeout=30)
        for _ in range(600):
            try:
                if self.http.get("/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("replica did not become ready")

    def sessions(self, n: int) -> list[str]:
        return [
            self.http.post("/v1/sessions", json={"model": "mackey-glass"}).json()["session_id"]
            for _ in range(n)
        ]

    def cpu(self) -> float:
        """CPU seconds the replica process has used (user + system, /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wrk_steps(url: str, ids: list[str], seconds: int) -> dict[str, float]:
    cmd = [
        "wrk",
        "-t1",
        "-c64",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA / "steps.lua"),
        url,
    ]
    env = {**os.environ, "LUA_DIR": str(LUA), "SESSION_IDS": ",".join(ids)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60).stdout
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk gave no RESULT line:\n{out}")
    return {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}


def http_replica(
    repo: Path, env: dict[str, str], server: Server | None, seconds: int, label: str
) -> dict[str, Any]:
    rep = Replica(repo, env)
    try:
        ids = rep.sessions(64)
        wrk_steps(rep.url, ids, 1)  # warm-up
        cpu0, mine0 = (server.cpu() if server else 0.0), rep.cpu()
        r = wrk_steps(rep.url, ids, seconds)
        cpu, mine = (server.cpu() - cpu0) if server else 0.0, rep.cpu() - mine0
    finally:
        rep.stop()
    errors = r["non2xx"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
    return {
        "case": label,
        "steps_per_s": r["rps"],
        "p50_ms": r["p50_ms"],
        "p99_ms": r["p99_ms"],
        "errors": int(errors),
        "replica_cpu_us_per_step": 1e6 * mine / max(1.0, r["requests"]),
        "redis_cpu_us_per_step": 1e6 * cpu / max(1.0, r["requests"]),
    }


# -- 4. bare commands ----------------------------------------------------------------------


async def bare_loop(server: Server, steps: int, state_bytes: int) -> dict[str, Any]:
    """What a step writes, without the script: HSET of the changed fields, PEXPIRE, ZADD,
    one pipeline (one round trip) per step, 64 concurrent streams, with redis-py."""
    import redis.asyncio as aioredis

    r = aioredis.Redis(port=server.port, max_connections=64)
    blob = b"\0" * state_bytes
    out = b"\0" * 4

    async def stream(k: int, n: int) -> None:
        key = f"bare:s:{k}"
        for i in range(n):
            p = r.pipeline(transaction=False)
            p.hset(
                key,
                mapping={
                    "rev": i,
                    "expires_at": i,
                    "offset": i,
                    "state:cell_states": blob,
                    "state:cell_outputs": blob,
                    "last_offset": i,
                    "last_digest": "0" * 64,
                    "last_outputs": out,
                },
            )
            p.pexpire(key, 3_600_000)
            p.zadd("bare:sessions", {key: i})
            await p.execute()

    box = [steps]
    with measure(server, box) as got:
        t = time.perf_counter()
        await asyncio.gather(*(stream(k, steps // 64) for k in range(64)))
        wall = time.perf_counter() - t
    await r.aclose()
    u = got[0]
    return {
        "case": "redis-py pipeline of the same writes",
        "steps_per_s": u.n / wall,
        "redis_cpu_us_per_step": 1e6 * u.cpu_s / u.n,
    }


def redis_benchmark(server: Server, n: int, state_bytes: int) -> dict[str, Any]:
    box = [n]
    with measure(server, box) as got:
        out = subprocess.run(
            [
                "redis-benchmark",
                "-p",
                str(server.port),
                "-q",
                "-n",
                str(n),
                "-c",
                "64",
                "-r",
                "100000",
                "-d",
                str(2 * state_bytes),
                "-t",
                "set",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
    m = re.search(r"([\d.]+) requests per second", out)
    u = got[0]
    return {
        "case": f"redis-benchmark SET of {2 * state_bytes} bytes",
        "steps_per_s": float(m.group(1)) if m else float("nan"),
        "redis_cpu_us_per_step": 1e6 * u.cpu_s / u.n,
    }


# -- 5. refused creates -------------------------------------------------------------------


async def _full_store(server: Server, live: int) -> RedisSessionStore:
    """A store at its limit: `live` ids in its (one) index, expiring in an hour."""
    prefix = f"refuse{live}:"
    pipe = server.client.pipeline(transaction=False)
    far = int(time.time() * 1000) + 3_600_000
    for start in range(0, live, 10_000):
        for i in range(start, min(live, start + 10_000)):
            pipe.zadd(f"{prefix}sessions", {f"id{i}": far})
        pipe.execute()
    settings = Settings(
        session_store="redis",
        redis_url=server.url,
        redis_prefix=prefix,
        max_sessions=live,
        _env_file=None,
    )
    return RedisSessionStore.from_settings(settings)


async def refusals(
    server: Server, few: int, many: int, tries: int
) -> tuple[float, float, float, float]:
    """A refused create at `few` and at `many` live sessions: the client's median seconds
    (the two interleaved, so both see the same machine) and Redis's own microseconds per
    refusal (INFO commandstats, each size on its own)."""
    stores = {few: await _full_store(server, few), many: await _full_store(server, many)}
    took: dict[int, list[float]] = {few: [], many: []}

    async def refuse(live: int, i: int) -> None:
        s = Session(f"new{live}-{i}", "m", 1, 60, {"h": np.zeros(4, np.float32)})
        t = time.perf_counter()
        try:
            await stores[live].create(s)
        except CapacityReached:
            took[live].append(time.perf_counter() - t)

    for i in range(tries):
        for live in stores:
            await refuse(live, i)
    usec: dict[int, float] = {}
    for live in stores:
        before = server.client.info("commandstats")["cmdstat_evalsha"]
        for i in range(tries):
            await refuse(live, tries + i)
        after = server.client.info("commandstats")["cmdstat_evalsha"]
        usec[live] = (after["usec"] - before["usec"]) / (after["calls"] - before["calls"])
    for store in stores.values():
        await store.close()
    assert all(len(v) == 2 * tries for v in took.values())
    return (statistics.median(took[few]), statistics.median(took[many]), usec[few], usec[many])


# -- projection ----------------------------------------------------------------------------


def project(
    mem: list[dict[str, Any]],
    steps: dict[str, dict[str, Any]],
    http: dict[str, dict[str, Any]],
    sessions: int = 10_000_000,
    rate: float = 1.0,
) -> dict[str, Any]:
    """10M sessions x 1 step/s: replica cores, Redis masters (+1 replica each), memory.

    CPU seconds per step, not wall-clock throughput, carry the projection: they are what a
    busy shared machine distorts least. Replicas: the HTTP replica's own CPU per step with
    WAIT 1. Redis: its CPU per step when clients alternate replicas (the dearer case: a read
    and a write), with WAIT 1; a master is one core (Redis runs commands on one thread)."""
    target = sessions * rate
    util = 0.6  # run everything at 60% of what it sustains: headroom for bursts, failovers
    worst = steps["alternating replicas (no cache), WAIT 1"]
    replica_us = http["redis + WAIT 1"]["replica_cpu_us_per_step"]
    redis_us = worst["redis_cpu_us_per_step"]
    biggest = max(mem, key=lambda r: r["used_memory_per_session"])
    mem_bytes = sessions * biggest["used_memory_per_session"]
    masters = target * redis_us / 1e6 / util
    return {
        "sessions": sessions,
        "steps_per_s": target,
        "utilisation": util,
        "replica_cpu_us_per_step": replica_us,
        "replica_cores": target * replica_us / 1e6 / util,
        "redis_cpu_us_per_step": redis_us,
        "steps_per_s_per_master": 1e6 / redis_us,
        "masters": masters,
        "replicas_of_masters": masters,
        "model_for_memory": biggest["model"],
        "redis_memory_gib": mem_bytes / 2**30,
        "redis_memory_gib_with_replicas": 2 * mem_bytes / 2**30,
        "memory_per_master_gib": mem_bytes / masters / 2**30,
        "network_mb_per_s_per_master": (worst["bytes_in_per_step"] + worst["bytes_out_per_step"])
        * target
        / masters
        / 1e6,
    }


def table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:,.1f}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    master = Server(tmp / "master")
    replica = Server(tmp / "replica", replica_of=master.port)
    out: dict[str, Any] = {}
    try:
        print(
            f"1. Redis memory per session ({args.memory_sessions} sessions per model, "
            "each created and stepped once)"
        )
        out["memory"] = await memory_per_session(master, tmp, args.memory_sessions)
        print(
            table(
                out["memory"],
                ["model", "state_bytes", "hash_bytes", "index_bytes", "used_memory_per_session"],
            )
        )

        print(f"\n2. Per step (mackey-glass, 64 sessions, {args.steps} steps in process)")
        cases = [
            ("one replica (cache of its writes)", {}),
            ("alternating replicas (no cache)", {"redis_cache_sessions": 0}),
            (
                "alternating replicas (no cache), WAIT 1",
                {"redis_cache_sessions": 0, "redis_min_replicas": 1},
            ),
            ("one replica, WAIT 1", {"redis_min_replicas": 1}),
        ]
        rows = [
            await per_step(master.url, master, tmp, args.steps, label, **kw) for label, kw in cases
        ]
        out["per_step"] = {r["case"]: r for r in rows}
        print(
            table(
                rows,
                [
                    "case",
                    "round_trips_per_step",
                    "redis_cpu_us_per_step",
                    "client_cpu_us_per_step",
                    "bytes_in_per_step",
                    "bytes_out_per_step",
                    "p50_ms",
                    "p99_ms",
                    "steps_per_s_in_process",
                ],
            )
        )
        for r in rows:
            cmds = ", ".join(f"{k} {v:.2f}" for k, v in r["commands_per_step"].items())
            print(f"   {r['case']}: {cmds}")

        print(
            f"\n3. One replica (1 worker) over HTTP: wrk, 1-step calls, 64 sessions, "
            f"{args.seconds} s"
        )
        repo = one_model("mackey-glass", tmp)
        redis_env = {"PEEPHOLE_SESSION_STORE": "redis", "PEEPHOLE_REDIS_URL": master.url}
        http = [
            http_replica(
                repo, {"PEEPHOLE_SESSION_STORE": "memory"}, None, args.seconds, "in-process store"
            ),
            http_replica(
                repo, {**redis_env, "PEEPHOLE_REDIS_PREFIX": "h0:"}, master, args.seconds, "redis"
            ),
            http_replica(
                repo,
                {**redis_env, "PEEPHOLE_REDIS_PREFIX": "h1:", "PEEPHOLE_REDIS_MIN_REPLICAS": "1"},
                master,
                args.seconds,
                "redis + WAIT 1",
            ),
        ]
        base = http[0]["steps_per_s"]
        for r in http:
            r["ratio_to_in_process"] = r["steps_per_s"] / base
        out["http"] = {r["case"]: r for r in http}
        print(
            table(
                http,
                [
                    "case",
                    "steps_per_s",
                    "ratio_to_in_process",
                    "p50_ms",
                    "p99_ms",
                    "errors",
                    "replica_cpu_us_per_step",
                    "redis_cpu_us_per_step",
                ],
            )
        )

        print("\n4. Redis CPU per step vs the same writes without the script")
        state_bytes = 16 * 4
        ours = out["per_step"]["alternating replicas (no cache)"]
        bare = [
            {
                "case": "a step (compare-and-set script)",
                "steps_per_s": ours["steps_per_s_in_process"],
                "redis_cpu_us_per_step": ours["redis_cpu_us_per_step"],
            },
            await bare_loop(master, args.steps, state_bytes),
            redis_benchmark(master, 10 * args.steps, state_bytes),
        ]
        for r in bare:
            r["redis_cpu_ratio"] = r["redis_cpu_us_per_step"] / bare[0]["redis_cpu_us_per_step"]
        out["bare"] = bare
        print(table(bare, ["case", "steps_per_s", "redis_cpu_us_per_step", "redis_cpu_ratio"]))

        few, many = 100, args.refusal_sessions
        t_few, t_many, us_few, us_many = await refusals(master, few, many, 300)
        out["refusal"] = {
            "live_few": few,
            "live_many": many,
            "ms_few": 1000 * t_few,
            "ms_many": 1000 * t_many,
            "redis_us_few": us_few,
            "redis_us_many": us_many,
        }
        print(
            f"\n5. A refused create at {few} and at {many:,} live sessions: "
            f"{1000 * t_few:.3f} and {1000 * t_many:.3f} ms for the client (interleaved), "
            f"{us_few:.1f} and {us_many:.1f} us of Redis time (the script)"
        )

        p = out["projection"] = project(out["memory"], out["per_step"], out["http"])
        print("\n6. Projection: 10,000,000 sessions, one step per second each, at 60% load")
        print(
            f"   replicas: {p['replica_cores']:,.0f} cores of replicas "
            f"({p['replica_cpu_us_per_step']:.0f} us of replica CPU a step, HTTP, WAIT 1)"
        )
        print(
            f"   Redis: {p['masters']:,.0f} masters + as many replicas "
            f"({p['steps_per_s_per_master']:,.0f} steps/s per master core, "
            f"{p['redis_cpu_us_per_step']:.1f} us of Redis CPU a step)"
        )
        print(
            f"   memory: {p['redis_memory_gib']:,.1f} GiB of sessions ({p['model_for_memory']}),"
            f" {p['redis_memory_gib_with_replicas']:,.1f} GiB with replicas, "
            f"{p['memory_per_master_gib']:.2f} GiB per master"
        )
        print(f"   network: {p['network_mb_per_s_per_master']:,.1f} MB/s per master")
    finally:
        replica.stop()
        master.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small counts, short cases")
    ap.add_argument("--seconds", type=int, default=8, help="HTTP case duration")
    ap.add_argument("--steps", type=int, default=6400, help="in-process steps per case")
    ap.add_argument("--memory-sessions", type=int, default=2000)
    ap.add_argument("--refusal-sessions", type=int, default=100_000)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.steps, args.memory_sessions, args.refusal_sessions = 2, 640, 200, 10_000
    for tool in ("redis-server", "redis-benchmark", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    with tempfile.TemporaryDirectory(prefix="peephole-scaling-") as d:
        out = asyncio.run(main_async(args, Path(d)))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
