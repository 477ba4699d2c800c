"""Session stores and worker counts, side by side in one run (ratios; absolute times are noise).

    python bench/stores.py                          # every part, this tree only
    python bench/stores.py --baseline DIR           # + the same cases on another checkout
    python bench/stores.py --parts workers          # one part: workers, stores, sweep, micro

DIR is a checkout of the project to compare with, e.g. the last commit with the mmap table:
`mkdir /tmp/base && git archive e70e965 | tar -x -C /tmp/base`. Its server runs with its own
defaults for the store (2 workers there meant its shared table).

Parts (HTTP parts use `python -m app`, wrk and the model of bench/http_bench.py):
- workers: this tree with 1 worker (memory store) and 2 workers (lmdb store): predict T=10
  (16 connections), predict T=1000 (4), one-step calls over 64 sessions (64): req/s, server CPU
  per request and the 2-worker / 1-worker ratios; this is what PEEPHOLE_WORKERS' default rests on.
- stores: 2 workers, steps over 64 sessions, baseline's store vs lmdb, rounds alternating.
- sweep: 2 workers; 10,000 sessions put straight into the server's store (its API, in another
  process) expire together and are swept while 8 connections step 8 other sessions; wrk runs
  in 1 s slices, so the slice holding the sweep shows any stall (the server logs the sweep).
- micro: in process, per store: a refused create at 100 and at 100,000 live sessions, a get,
  a locked change (median microseconds). `--quick`: this part only, 100 vs 5,000 (smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_bench import (  # noqa: E402
    LUA,
    Result,
    build_repository,
    free_port,
    post,
    stop,
    tree_cpu,
    wait_ready,
    write_bodies,
    wrk,
)

CASES = {"t10": 16, "t1000": 4, "steps": 64}
SWEEP_SESSIONS = 10_000


class Server:
    """`python -m app` of the tree `root` on a free port; its log goes to a file."""

    def __init__(self, root: Path, repo: Path, work: Path, workers: int, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / f"server-{self.port}.log"
        full = {**os.environ, "PYTHONPATH": str(root), "PEEPHOLE_MODEL_REPOSITORY": str(repo),
                "PEEPHOLE_PORT": str(self.port), "PEEPHOLE_WORKERS": str(workers),
                "PEEPHOLE_PROVIDER": "cpu", "PEEPHOLE_LOG_LEVEL": "info",
                "PEEPHOLE_ACCESS_LOG": "false", **env}  # fmt: skip
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=root, env=full,
                                         stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_ready(self.url, self.proc)
        except Exception:
            stop(self.proc)
            raise RuntimeError(f"server did not start:\n{self.log.read_text()[-3000:]}") from None

    def sessions(self, n: int, ttl: int = 3600) -> list[str]:
        return [post(self.url + "/v1/sessions", {"model": "lstm", "ttl_seconds": ttl})["session_id"]
                for _ in range(n)]  # fmt: skip

    def run(self, case: str, conns: int, seconds: int, ids: list[str], work: Path) -> Result:
        if case == "steps":
            lua, env, path = LUA / "steps.lua", {"SESSION_IDS": ",".join(ids)}, "/"
        else:
            lua, env = LUA / "predict.lua", {"BODY_FILE": str(work / f"{case}.json")}
            path = "/v1/models/lstm/predict"
        cpu0 = tree_cpu(self.proc.pid)
        r = wrk(self.url + path, conns, seconds, lua, env)
        r.cpu_us = (tree_cpu(self.proc.pid) - cpu0) / max(1, r.requests) * 1e6
        return r

    def close(self) -> str:
        stop(self.proc)
        return self.log.read_text()


def measure(srv: Server, cases: list[str], work: Path, warmup: int, duration: int,
            label: str) -> dict[str, Result]:  # fmt: skip
    out = {}
    for case in cases:
        ids = srv.sessions(CASES[case]) if case == "steps" else []
        if warmup:
            srv.run(case, CASES[case], warmup, ids, work)
        out[case] = r = srv.run(case, CASES[case], duration, ids, work)
        print(f"  {label:<26} {case:<6} {r}", flush=True)
    return out


def part_workers(repo: Path, work: Path, args: argparse.Namespace) -> None:
    print("\n== workers: 1 (memory) vs 2 (lmdb), this tree")
    cases = list(CASES)
    configs = {"1 worker, memory": (1, "memory"), "2 workers, lmdb": (2, "lmdb")}
    rounds: list[dict[str, dict[str, Result]]] = []
    for n in range(args.rounds):
        res = {}
        for label, (workers, store) in configs.items():
            srv = Server(ROOT, repo, work, workers, PEEPHOLE_SESSION_STORE=store)
            try:
                res[label] = measure(srv, cases, work, args.warmup, args.duration, label)
            finally:
                srv.close()
        rounds.append(res)
        print(f"  round {n + 1}: " + "  ".join(
            f"{c} {res['2 workers, lmdb'][c].rps / res['1 worker, memory'][c].rps:.2f}x"
            for c in cases))  # fmt: skip
    print("2 workers / 1 worker: req/s ratio (range over rounds), CPU per request ratio")
    for c in cases:
        rps = [r["2 workers, lmdb"][c].rps / r["1 worker, memory"][c].rps for r in rounds]
        cpu = [r["2 workers, lmdb"][c].cpu_us / r["1 worker, memory"][c].cpu_us for r in rounds]
        print(f"  {c:<6} req/s {min(rps):.2f}-{max(rps):.2f}x   CPU/req {min(cpu):.2f}-"
              f"{max(cpu):.2f}x")  # fmt: skip


def part_stores(repo: Path, work: Path, args: argparse.Namespace) -> None:
    if args.baseline is None:
        print("\n== stores: skipped (no --baseline)")
        return
    print(f"\n== stores: 2 workers, steps over 64 sessions: baseline ({args.baseline}) vs lmdb")
    trees = {"baseline": (args.baseline, {}), "lmdb": (ROOT, {"PEEPHOLE_SESSION_STORE": "lmdb"})}
    ratios, cpus = [], []
    for n in range(args.rounds):
        res = {}
        order = list(trees) if n % 2 == 0 else list(reversed(trees))
        for label in order:
            root, env = trees[label]
            srv = Server(root, repo, work, 2, **env)
            try:
                res[label] = measure(srv, ["steps"], work, args.warmup, args.duration, label)
            finally:
                srv.close()
        ratios.append(res["lmdb"]["steps"].rps / res["baseline"]["steps"].rps)
        cpus.append(res["baseline"]["steps"].cpu_us / res["lmdb"]["steps"].cpu_us)
        print(f"  round {n + 1}: lmdb / baseline req/s {ratios[-1]:.2f}x, "
              f"CPU per request baseline / lmdb {cpus[-1]:.2f}x")  # fmt: skip
    print(
        f"lmdb / baseline, 2-worker steps: req/s {min(ratios):.2f}-{max(ratios):.2f}x, "
        f"CPU per request {min(cpus):.2f}-{max(cpus):.2f}x (above 1: lmdb cheaper)"
    )


def fill(kind: str, path: str, n: int, expire_at: float) -> None:
    """n sessions that all expire at `expire_at`, straight into the store of a running server
    (its lmdb directory or the baseline's table) through that tree's store API."""
    import numpy as np

    from app.sessions.base import Session

    if kind == "lmdb":
        from app.sessions.lmdb import LMDBSessionStore

        store = LMDBSessionStore(path, 1_000_000)
    else:
        from app.sessions.shared import SharedSessionStore  # the baseline's table

        store = SharedSessionStore(path, 100_000, state_floats=16)

    async def go() -> None:
        for k in range(n):
            state = {"c": np.zeros(32, np.float32)}
            await store.create(Session(session_id=f"old{k}", model="lstm", version=1,
                                       ttl_seconds=1, state=state,
                                       created_at=expire_at - 1))  # fmt: skip

    asyncio.run(go())


def _live(url: str) -> int:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        m = re.search(r"^peephole_sessions_live (\S+)$", r.read().decode(), re.M)
    return int(float(m.group(1))) if m else -1


def part_sweep(repo: Path, work: Path, args: argparse.Namespace) -> None:
    print(f"\n== sweep: {SWEEP_SESSIONS} sessions expire together; 8 connections step 8 others")
    trees = {"lmdb": (ROOT, "lmdb", "PEEPHOLE_LMDB_PATH")}
    if args.baseline is not None:
        trees = {"baseline": (args.baseline, "shared", "PEEPHOLE_SHARED_STORE_DIR"), **trees}
    every = args.sweep_every
    for label, (root, kind, var) in trees.items():
        store = work / f"store-{label}"
        env = {var: str(store), "PEEPHOLE_SESSION_SWEEP_SECONDS": str(every)}
        if kind == "lmdb":
            env["PEEPHOLE_SESSION_STORE"] = "lmdb"
        srv = Server(root, repo, work, 2, **env)
        try:
            ids = srv.sessions(8)
            expire_at = time.time() + 15  # the fill takes a few seconds; then a quiet spell
            cmd = [sys.executable, __file__, "--fill-only", kind, str(store), str(expire_at)]
            subprocess.run(cmd, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, check=True)
            slices: list[tuple[float, Result]] = []
            while time.time() < expire_at + 2 * every + 2:  # the sweep comes within `every` s
                slices.append((time.time() - expire_at, srv.run("steps", 8, 1, ids, work)))
            live = _live(srv.url)
        finally:
            log = srv.close()
        before = [r.p99 for at, r in slices if at < 0]
        after = [(at, r) for at, r in slices if at >= 0]
        worst_at, worst = max(after, key=lambda x: x[1].p99)
        print(
            f"  {label:<9} step p99 per 1 s slice (ms), before the expiry: "
            + " ".join(f"{x:.1f}" for x in before)
            + "; from it on: "
            + " ".join(f"{r.p99:.1f}" + ("" if r.requests else " (no reply)") for _, r in after)
        )
        print(f"  {label:<9} before: median slice p99 {statistics.median(before):.2f} ms; after: "
              f"worst slice p99 {worst.p99:.2f} ms ({worst_at:.0f} s after the expiry), "
              f"{min(r.requests for _, r in after)} replies in the emptiest slice; live sessions "
              f"after: {live}; errors {sum(r.errors for _, r in slices)}")  # fmt: skip
        for line in log.splitlines():
            if "swept" in line:
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                print(f"  {label:<9} log, {stamp - expire_at:+.1f} s after the expiry: "
                      f"{line.split(': ', 1)[-1]}")  # fmt: skip


# -- in process -------------------------------------------------------------------------------


def _micro_stores(tmp: Path, big: int) -> dict[str, object]:
    """The stores of the tree on sys.path (this one, or a baseline's)."""
    from app.sessions.memory import MemorySessionStore

    stores: dict[str, object] = {}
    for n in (100, big):
        stores[f"memory/{n}"] = MemorySessionStore(max_sessions=n)
        try:
            from app.sessions.lmdb import LMDBSessionStore

            stores[f"lmdb/{n}"] = LMDBSessionStore(tmp / f"lmdb-{n}", n)
        except ImportError:
            from app.sessions.shared import SharedSessionStore  # the baseline's table

            stores[f"shared/{n}"] = SharedSessionStore(tmp / f"shared-{n}", n, state_floats=256)
    return stores


def micro(big: int) -> None:
    """Run in the tree on sys.path; prints one line per store."""
    import numpy as np

    from app.errors import CapacityReached
    from app.sessions.base import Session

    def session(sid: str) -> Session:
        st = {"cell_states": np.zeros(32, np.float32), "outputs": np.zeros(32, np.float32)}
        return Session(session_id=sid, model="lstm", version=1, ttl_seconds=3600, state=st)

    async def timed(n: int, fn) -> float:  # type: ignore[no-untyped-def]
        ts = []
        for k in range(n):
            t0 = time.process_time()
            await fn(k)
            ts.append(time.process_time() - t0)
        return statistics.median(ts) * 1e6

    async def go(tmp: Path) -> None:
        stores = _micro_stores(tmp, big)
        refused: dict[str, float] = {}
        for name, store in stores.items():
            size = int(name.split("/")[1])
            for k in range(size):
                await store.create(session(f"s{k}"))  # type: ignore[attr-defined]

            async def refuse(k: int, store=store) -> None:  # type: ignore[no-untyped-def]
                try:
                    await store.create(session(f"x{k}"))
                except CapacityReached:
                    return
                raise AssertionError("not refused")

            async def get(k: int, store=store, size=size) -> None:  # type: ignore[no-untyped-def]
                await store.get(f"s{k % size}")

            async def change(k: int, store=store, size=size) -> None:  # type: ignore[no-untyped-def]
                async with store.locked(f"s{k % size}") as s:
                    s.offset += 1

            refused[name] = await timed(50 if size > 10_000 else 500, refuse)
            g, c = await timed(2000, get), await timed(2000, change)
            print(
                f"  {name:<15} refused create {refused[name]:9.1f} us   get {g:6.1f} us   "
                f"locked change {c:6.1f} us",
                flush=True,
            )
            await store.close()  # type: ignore[attr-defined]
        for kind in sorted({n.split("/")[0] for n in refused}):
            r = refused[f"{kind}/{big}"] / refused[f"{kind}/100"]
            print(f"  {kind}: refused create at {big:,} / at 100 live sessions: {r:.1f}x")

    # on /dev/shm, as `python -m app` puts a private lmdb store when it has room
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        asyncio.run(go(Path(tmp)))


def part_micro(args: argparse.Namespace) -> None:
    print("\n== micro: in process, median CPU microseconds (process time: steadier under load)")
    trees = {"this tree": ROOT, **({"baseline": args.baseline} if args.baseline else {})}
    for label, root in trees.items():
        print(f" {label}:", flush=True)
        env = {**os.environ, "PYTHONPATH": str(root)}
        cmd = [sys.executable, __file__, "--micro-only", "--micro-big", str(args.micro_big)]
        subprocess.run(cmd, cwd=root, env=env, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline", type=Path, help="another checkout to compare with")
    ap.add_argument("--parts", default="micro,workers,stores,sweep")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sweep-every", type=int, default=5, help="sweep interval in the sweep part")
    ap.add_argument("--fill-only", nargs=3, help=argparse.SUPPRESS)  # kind, path, expire at
    ap.add_argument("--micro-big", type=int, default=100_000, help="the larger store (micro)")
    ap.add_argument("--quick", action="store_true", help="smoke run: micro, 100 vs 5,000")
    ap.add_argument("--micro-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.micro_only or args.fill_only:
        sys.path[0:1] = []  # the tree named by PYTHONPATH, not this file's
        if args.fill_only:
            kind, path, expire_at = args.fill_only
            fill(kind, path, SWEEP_SESSIONS, float(expire_at))
        else:
            micro(args.micro_big)
        return 0
    if args.quick:
        args.parts, args.micro_big = "micro", 5000
    parts = args.parts.split(",")
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; wrk -t1, "
        f"{args.duration} s per case after {args.warmup} s warm-up, {args.rounds} round(s)"
    )
    if "micro" in parts:
        part_micro(args)
    if parts == ["micro"]:
        return 0
    if not shutil.which("wrk"):
        print("wrk is not installed: HTTP parts skipped (apt-get install wrk)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="peephole-stores-bench-"))
    try:
        write_bodies(work)
        repo = build_repository(work)
        if "workers" in parts:
            part_workers(repo, work, args)
        if "stores" in parts:
            part_stores(repo, work, args)
        if "sweep" in parts:
            part_sweep(repo, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
