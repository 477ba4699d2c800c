"""A million live sessions in one process: memory, step latency, allocations, and Redis's figure.

    python bench/million.py                      # 1,000 vs 1,000,000 sessions of mackey-glass/1
    python bench/million.py --baseline DIR       # + the same on another checkout, side by side
    python bench/million.py --parts redis        # one part: size, alloc, gather, redis
    python bench/million.py --quick              # smoke run (1,000 vs 5,000; 200 in Redis)

DIR is a checkout to compare with, e.g. the last commit with the dict-of-objects memory store:
`mkdir /tmp/base && git archive "$(git log -1 --format=%H --grep='in columnar tables')^" |
tar -x -C /tmp/base`.

Parts (each tree's run is its own process, so that its RSS is its own):
- size: the data plane with the memory store, the real batcher and models/mackey-glass/1
  (state 2 x 16 float32 = 128 bytes). Two stores side by side, 1,000 and N sessions, each
  created through `DataPlane.create_session` and stepped once (so each holds its last chunk
  for retries, as a live session does). RSS before and after, bytes per session (the store's
  own breakdown where it has one), Python objects the garbage collector tracks, and the time of
  one full collection. Then step latency in alternating rounds: one client stepping random
  sessions one call at a time, and 64 clients at once (batched): p50/p99 at 1,000 vs N.
- alloc: allocations per step (memray, counting every allocation, Python's and C's) through the
  data plane -- one client, and 64 at once -- and per store change alone. Needs `memray`.
- gather: what gathering states by row straight into the batch would save: the batcher's merge
  and split of 64 one-step calls as today (per-call state arrays) against a gather from table
  rows and a scatter back by row index; allocations and time per step.
- redis: bytes per session in Redis (`MEMORY USAGE` of a session's hash, plus its share of the
  expiry index) for mackey-glass/1 sessions created and stepped once through the data plane,
  on a redis-server started on a free loopback port.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "mackey-glass"
CLIENTS = 64


def rss() -> int:
    """Resident bytes of this process, now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def sid(k: int) -> str:
    """Session k's id, in the service's own form (32 hex characters), made again on demand:
    a list of a million ids would weigh on this process's RSS."""
    return f"{k * 0x9E3779B97F4A7C15 % (1 << 128):032x}"


def dataplane(repo: Path, max_sessions: int) -> Any:
    """A DataPlane on the tree on sys.path: memory store, the real batcher, one model."""
    from app.config import Settings
    from app.dataplane import DataPlane
    from app.inference.batcher import BatchingRunner
    from app.inference.registry import ModelRegistry
    from app.inference.repository import scan_repository
    from app.sessions.memory import MemorySessionStore

    settings = Settings(model_repository=repo, provider="cpu", max_sessions=max_sessions,
                        _env_file=None)  # fmt: skip
    registry = ModelRegistry.build(scan_repository(repo), "cpu", 1)
    runner = BatchingRunner(1, None)
    return DataPlane(registry, MemorySessionStore(max_sessions), runner, settings)


def one_model_repo(tmp: Path) -> Path:
    repo = tmp / "models"
    repo.mkdir()
    (repo / MODEL).symlink_to(ROOT / "models" / MODEL)
    return repo


async def fill(dp: Any, n: int, first: int = 0, wave: int = 256) -> None:
    """n sessions, each created and then stepped once, in waves of `wave` concurrent calls."""
    x = np.full((1, 1), 0.5, np.float32)
    for start in range(first, first + n, wave):
        ks = range(start, min(start + wave, first + n))
        await asyncio.gather(*(dp.create_session(MODEL, session_id=sid(k)) for k in ks))
        await asyncio.gather(*(dp.step(sid(k), x, 0) for k in ks))


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e6, q))


async def latencies(dp: Any, first: int, n: int, offsets: np.ndarray, calls: int,
                    clients: int) -> list[float]:  # fmt: skip
    """`clients` clients, each stepping random sessions of its own (k = its number mod
    clients) one call at a time, with the offset a client would send; every call's seconds."""
    x = np.full((1, 1), 0.5, np.float32)
    rng = random.Random(first + n + clients)
    out: list[float] = []

    async def client(c: int) -> None:
        for _ in range(calls):
            k = rng.randrange(c, n, clients) if n > clients else c % n
            t0 = time.perf_counter()
            r = await dp.step(sid(first + k), x, int(offsets[first + k]))
            out.append(time.perf_counter() - t0)
            offsets[first + k] = r.session.offset

    await asyncio.gather(*(client(c) for c in range(clients)))
    return out


def part_size(n_big: int, n_small: int, calls: int, rounds: int) -> dict[str, Any]:
    """Runs in the tree on sys.path; returns its figures (the parent prints them)."""
    tmp = Path(tempfile.mkdtemp(prefix="peephole-million-"))
    try:
        repo = one_model_repo(tmp)
        small, big = dataplane(repo, n_small), dataplane(repo, n_big)
        offsets = np.zeros(n_small + n_big, np.int64)  # (before the baseline RSS)

        async def go() -> dict[str, Any]:
            await fill(small, n_small)
            offsets[:n_small] = 1
            await latencies(small, 0, n_small, offsets, 20, 1)  # warm-up
            gc.collect()
            rss0, objects0 = rss(), len(gc.get_objects())
            t0 = time.perf_counter()
            await fill(big, n_big, n_small)
            fill_s = time.perf_counter() - t0
            offsets[n_small:] = 1
            gc.collect()
            t = time.perf_counter()
            gc.collect()
            full_gc = time.perf_counter() - t
            out: dict[str, Any] = {
                "rss_before": rss0, "rss_after": rss(), "fill_s": fill_s, "full_gc_s": full_gc,
                "objects_per_session": (len(gc.get_objects()) - objects0) / n_big,
            }  # fmt: skip
            store = big.store
            if hasattr(store, "footprint"):
                out["footprint"] = store.footprint()
            lat: dict[str, list[float]] = {}
            for _ in range(rounds):  # alternating, so that load changes hit both
                for label, dp, first, n in (("small", small, 0, n_small),
                                            ("big", big, n_small, n_big)):  # fmt: skip
                    for clients in (1, CLIENTS):
                        got = await latencies(dp, first, n, offsets, calls, clients)
                        lat.setdefault(f"{label}/{clients}", []).extend(got)
            out["latency_us"] = {k: [pct(v, 50), pct(v, 99)] for k, v in lat.items()}
            return out

        return asyncio.run(go())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- allocations ---------------------------------------------------------------------------------


def count_allocations(work: Callable[[], Awaitable[int]]) -> float:
    """Allocations (Python's allocator and malloc alike) per unit of `work`: it runs inside
    memray's tracker and returns how many units (steps) it did."""
    import memray
    from memray import AllocatorType as A

    frees = {A.FREE, A.PYMALLOC_FREE, A.MUNMAP}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.bin"

        async def tracked() -> int:
            with memray.Tracker(path, trace_python_allocators=True):
                return await work()

        units = asyncio.run(tracked())
        records = memray.FileReader(path).get_allocation_records()
        n = sum(1 for r in records if r.allocator not in frees)
    return n / units


def part_alloc(steps: int) -> dict[str, float]:
    """Allocations per step in the tree on sys.path: through the data plane (the event loop's
    share included: the batcher schedules on it), and a store change alone."""
    from app.sessions.base import Session, inputs_digest
    from app.sessions.memory import MemorySessionStore

    tmp = Path(tempfile.mkdtemp(prefix="peephole-million-"))
    x = np.full((1, 1), 0.5, np.float32)
    out: dict[str, float] = {}
    try:
        repo = one_model_repo(tmp)
        dp = dataplane(repo, 10_000)
        asyncio.run(fill(dp, 1000))
        offsets = np.ones(1000, np.int64)

        def stepping(clients: int) -> Callable[[], Awaitable[int]]:
            async def work() -> int:
                async def client(c: int) -> None:
                    for k in range(steps // clients):
                        j = (c + k * clients) % 1000
                        offsets[j] = (await dp.step(sid(j), x, int(offsets[j]))).session.offset

                await asyncio.gather(*(client(c) for c in range(clients)))
                return steps // clients * clients

            return work

        for clients in (1, CLIENTS):
            count_allocations(stepping(clients))  # warm-up: caches, the batcher's cost model
            out[f"step, {clients} client{'s' * (clients > 1)}"] = count_allocations(
                stepping(clients)
            )

        store = MemorySessionStore(10_000)
        st = {"cell_states": np.zeros(16, np.float32), "cell_outputs": np.zeros(16, np.float32)}

        async def put() -> None:
            for k in range(1000):
                await store.create(Session(session_id=sid(k), model=MODEL, version=1,
                                           ttl_seconds=3600, state=dict(st)))  # fmt: skip

        asyncio.run(put())
        y, digest = np.ones((1, 1), np.float32), inputs_digest(x)
        new = {k: v + 1 for k, v in st.items()}

        async def changes() -> int:
            for k in range(steps):
                async with store.locked(sid(k % 1000)) as s:  # what a step changes
                    s.last_offset, s.last_digest, s.last_outputs = s.offset, digest, y
                    s.state, s.offset = new, s.offset + 1
            return steps

        out["store change alone"] = count_allocations(changes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# -- gather ---------------------------------------------------------------------------------------


def part_gather(batches: int) -> None:
    """Today's merge/split of 64 one-step calls against a gather/scatter by row (this tree)."""
    from app.inference import batcher
    from app.inference.engine import EngineResult
    from app.inference.registry import ModelRegistry
    from app.inference.repository import scan_repository

    tmp = Path(tempfile.mkdtemp(prefix="peephole-million-"))
    try:
        repo = one_model_repo(tmp)
        engine = ModelRegistry.build(scan_repository(repo), "cpu", 1).get(MODEL, None)
        B, rows = CLIENTS, 100_000
        table = {n: np.random.default_rng(0).standard_normal((rows, 16), np.float32)
                 for n in ("cell_states", "cell_outputs")}  # fmt: skip
        picks = np.random.default_rng(1).choice(rows, B, replace=False)
        x = np.full((1, 1, 1), 0.5, np.float32)
        loop = asyncio.new_event_loop()

        def calls() -> list[Any]:  # as the store's copy reaches the batcher: a state per call
            return [batcher._Call(x, {n: a[r].copy()[None] for n, a in table.items()}, None,
                                  loop.create_future()) for r in picks]  # fmt: skip

        def today() -> None:
            cs = calls()
            xb, states, lengths = batcher._merge(engine, cs)
            batcher._split(engine.run(xb, states, lengths), cs)
            for c, r in zip(cs, picks, strict=True):  # the data plane keeps each final state
                for n, a in c.future.result().states.items():
                    table[n][r] = a[0]

        def gather() -> None:
            cs = [batcher._Call(x, None, None, loop.create_future()) for _ in picks]
            xb = np.concatenate([c.x for c in cs])
            result = engine.run(xb, {n: a[picks] for n, a in table.items()}, None)
            for n, a in result.states.items():
                table[n][picks] = a  # one scatter per state tensor
            for k, c in enumerate(cs):
                c.future.set_result(EngineResult(result.y[k : k + 1], {}, None, True))

        def bare() -> None:
            xb = np.concatenate([x] * B)
            engine.run(xb, {n: a[picks] for n, a in table.items()}, None)

        times: dict[str, list[float]] = {"today": [], "gather": [], "run alone": []}
        for _ in range(5):
            for label, fn in (("today", today), ("gather", gather), ("run alone", bare)):
                t = time.process_time()
                for _ in range(batches):
                    fn()
                times[label].append((time.process_time() - t) / batches / B * 1e6)
        allocs: dict[str, float] = {}
        try:
            for label, fn in (("today", today), ("gather", gather), ("run alone", bare)):

                async def work(fn: Callable[[], None] = fn) -> int:
                    for _ in range(batches):
                        fn()
                    return batches * B

                allocs[label] = count_allocations(work)
        except ImportError:
            pass
        loop.close()
        print(f"\n== gather: {B} one-step calls per batch, {engine.name}/{engine.version}, "
              "CPU microseconds and allocations per step (median of 5)")  # fmt: skip
        for label, ts in times.items():
            a = f"{allocs[label]:6.1f}" if label in allocs else "   (memray not installed)"
            print(f"  {label:<10} {statistics.median(ts):6.2f} us   allocations {a}")
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"  batcher's own share: today {med['today'] - med['run alone']:.2f} us, gather "
              f"{med['gather'] - med['run alone']:.2f} us per step")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- redis ----------------------------------------------------------------------------------------


def part_redis(n: int) -> None:
    import redis

    from app.config import Settings
    from app.dataplane import DataPlane
    from app.inference.batcher import BatchingRunner
    from app.inference.registry import ModelRegistry
    from app.inference.repository import scan_repository
    from app.sessions.redis import RedisSessionStore

    if not shutil.which("redis-server"):
        print("\n== redis: skipped (redis-server is not installed)")
        return
    from bench.http_bench import free_port

    tmp = Path(tempfile.mkdtemp(prefix="peephole-million-"))
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                            stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        repo = one_model_repo(tmp)
        url = f"redis://127.0.0.1:{port}/0"
        settings = Settings(model_repository=repo, provider="cpu", session_store="redis",
                            redis_url=url, max_sessions=n + 10, _env_file=None)  # fmt: skip
        used0 = int(client.info("memory")["used_memory"])

        async def go() -> None:
            store = RedisSessionStore.from_settings(settings)
            registry = ModelRegistry.build(scan_repository(repo), "cpu", 1)
            dp = DataPlane(registry, store, BatchingRunner(1, None), settings)
            await fill(dp, n, wave=16)  # (within the client's connection pool)
            await store.close()

        asyncio.run(go())
        used = int(client.info("memory")["used_memory"]) - used0
        prefix = settings.redis_prefix
        keys = [k for k in client.scan_iter(match=f"{prefix}s:*", count=1000)]
        sample = keys[:: max(1, len(keys) // 1000)]
        per_hash = statistics.mean(client.memory_usage(k, samples=0) for k in sample)
        index = client.memory_usage(f"{prefix}sessions", samples=0) or 0
        print(f"\n== redis: {len(keys):,} sessions of {MODEL}/1, created and stepped once "
              f"(redis-server {client.info('server')['redis_version']})")  # fmt: skip
        print(f"  MEMORY USAGE of a session's hash: {per_hash:.0f} bytes (mean of {len(sample)})")
        print(f"  the expiry index (sorted set) per session: {index / len(keys):.0f} bytes")
        print(f"  per session, hash + index: {per_hash + index / len(keys):.0f} bytes; "
              f"used_memory grew {used / len(keys):.0f} bytes per session")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


# -- the parent: runs each tree's parts in a process of its own and prints them side by side ----


def in_tree(root: Path, flag: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), flag, "--sessions", str(args.sessions),
           "--small", str(args.small), "--calls", str(args.calls), "--rounds", str(args.rounds),
           "--alloc-steps", str(args.alloc_steps)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{root}: {flag} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def print_size(trees: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    big, small = f"{args.sessions:,}", f"{args.small:,}"
    print(f"\n== size: {big} live sessions of {MODEL}/1 in one process (memory store), "
          f"each created and stepped once")  # fmt: skip
    for label, r in trees.items():
        per = (r["rss_after"] - r["rss_before"]) / args.sessions
        print(f"  {label}: RSS {r['rss_before'] / 2**20:.0f} MiB before, "
              f"{r['rss_after'] / 2**20:.0f} MiB with {big}: {per:.0f} bytes per session; "
              f"filled in {r['fill_s']:.0f} s; {r['objects_per_session']:.2f} GC-tracked objects "
              f"per session; one full gc.collect() {r['full_gc_s'] * 1e3:.0f} ms")  # fmt: skip
        if "footprint" in r:
            fp = r["footprint"]
            parts = ", ".join(f"{k} {v / args.sessions:.1f}" for k, v in fp.items())
            print(f"    the store's own count, bytes per session: {parts}; "
                  f"total {sum(fp.values()) / args.sessions:.0f}")  # fmt: skip
    print(f"\n  step latency, us (p50 / p99), {args.rounds} alternating rounds of {args.calls} "
          f"calls per client on random sessions")  # fmt: skip
    for label, r in trees.items():
        lat = r["latency_us"]
        for clients in (1, CLIENTS):
            a, b = lat[f"small/{clients}"], lat[f"big/{clients}"]
            print(f"  {label:<10} {clients:>2} client{'s' * (clients > 1):<1}  "
                  f"{small} live {a[0]:7.1f} / {a[1]:7.1f}   {big} live {b[0]:7.1f} / "
                  f"{b[1]:7.1f}   ratio {b[0] / a[0]:.2f}x / {b[1] / a[1]:.2f}x")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline", type=Path, help="another checkout to compare with")
    ap.add_argument("--parts", default="size,alloc,gather,redis")
    ap.add_argument("--sessions", type=int, default=1_000_000, help="the large store")
    ap.add_argument("--small", type=int, default=1000, help="the small store")
    ap.add_argument("--calls", type=int, default=400, help="calls per client per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--alloc-steps", type=int, default=2048)
    ap.add_argument("--redis-sessions", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="smoke run")
    ap.add_argument("--size-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--alloc-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.size_only or args.alloc_only:
        sys.path[0:1] = []  # the tree named by PYTHONPATH, not this file's
        if args.size_only:
            r = part_size(args.sessions, args.small, args.calls, args.rounds)
        else:
            r = part_alloc(args.alloc_steps)
        print(json.dumps(r))
        return 0
    sys.path.insert(0, str(ROOT))
    if args.quick:
        args.sessions, args.calls, args.rounds, args.alloc_steps = 5000, 20, 1, 128
        args.redis_sessions = 200
    parts = args.parts.split(",")
    trees = {"this tree": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, {date.today()}, "
          f"Python {sys.version.split()[0]}, numpy {np.__version__}")  # fmt: skip
    if "size" in parts:
        print_size({label: in_tree(root, "--size-only", args) for label, root in trees.items()},
                   args)  # fmt: skip
    if "alloc" in parts:
        try:
            import memray  # noqa: F401
        except ImportError:
            print("\n== alloc: skipped (pip install memray)")
        else:
            print(f"\n== alloc: allocations per step, {args.alloc_steps} steps over 1,000 "
                  "sessions (memray, Python's allocator and malloc)")  # fmt: skip
            for label, root in trees.items():
                for what, n in in_tree(root, "--alloc-only", args).items():
                    print(f"  {label:<10} {what:<22} {n:7.1f}")
    if "gather" in parts:
        part_gather(20 if args.quick else 400)
    if "redis" in parts:
        part_redis(args.redis_sessions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
