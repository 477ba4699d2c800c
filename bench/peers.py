"""Peephole vs every peer (TorchServe, KServe, BentoML, LitServe) and the bare ASGI ceiling.

    bench/peers.sh DIR                      # DIR holds the peers' harnesses (or PEERS_DIR=DIR)
    bench/peers.sh DIR --rounds 3           # repeat; each ratio with its range
    bench/peers.sh DIR --peers kserve,torchserve --cases t1000
    bench/peers.sh DIR --no-bare            # without the bare ASGI app

(bench/peers.sh runs this file, bench/peers.py, with the same arguments.)

DIR has one folder per peer (torchserve/, kserve/, bentoml/, litserve/), each with setup.sh,
start.sh, bench.sh and stop.sh. Every peer runs through its own scripts, one after the other
so that only the server under test holds the cores: setup.sh (when start.sh cannot start it,
e.g. on the first run), start.sh, bench.sh (its correctness line, the three wrk cases and its
step bookkeeping), stop.sh. A peer found already running is used as it is and left running.
Then Peephole (`python -m app`, bench/http_bench.py's model of the peers' size) and the bare
ASGI app (bench/bare_asgi.py: a fixed body on Peephole's own server stack, the ceiling of
Python HTTP here) take the same wrk cases: the same bodies, lua result line, warm-up and
duration, `wrk -t1 --timeout 10s`. Every other round runs Peephole and the bare app first
and the peers after them: the box's speed drifts over minutes (a third between two runs of
the same tree an hour apart), and no server should always get the same part of the run.

The table gives req/s per case, the best peer of each case and Peephole's ratio to it (the
best peer differs by case), errors (non-2xx + socket errors; every one must be zero), and
Peephole as a fraction of the bare ASGI app. Ratios are of the same round.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import http_bench  # noqa: E402  (the HTTP harness: wrk, the cases, the model, CPU accounting)
from http_bench import CASES, Result, pin_tree, tree_cpu  # noqa: E402

# folder -> (label, pid file after `source env.sh`: the server process the CPU is read from)
PEERS = {
    "torchserve": ("TorchServe", "$TS_RUN/.model_server.pid"),
    "kserve": ("KServe", "$KS_PID_FILE"),
    "bentoml": ("BentoML", "$BM_PID_FILE"),
    "litserve": ("LitServe", "$LS_PID_FILE"),
}
LINES = {  # bench.sh line prefixes -> case (longest first: "T=10" prefixes "T=1000")
    "predict T=1000,": "t1000",
    "predict T=10,": "t10",
    "1 step x": "steps",
}
_LINE = re.compile(r"(.*?)\s+([\d.]+) req/s\s+p50\s+([\d.]+) ms\s+p99\s+([\d.]+) ms\s+"
                   r"non-2xx (\d+)\s+socket errors (\d+)")  # fmt: skip


class Peer:
    """One peer's harness folder, driven by its own scripts."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.label, self._pid_file = PEERS[folder.name]
        self.started = False  # by this run (then this run stops it)

    def _script(self, name: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(self.dir / name)], capture_output=True, text=True,
                              env={**os.environ, **env})  # fmt: skip

    def pid(self) -> int | None:
        """The server's pid from its pid file (None when it is not running)."""
        cmd = f'source "{self.dir / "env.sh"}" && cat "{self._pid_file}"'
        out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True).stdout.split()
        try:
            pid = int(out[0])
            os.kill(pid, 0)
        except (IndexError, ValueError, OSError):
            return None
        return pid

    def start(self) -> None:
        """start.sh; when it fails (nothing set up yet), setup.sh once and start.sh again."""
        if self.pid() is not None:
            print(f"  {self.label}: already running, used as it is", flush=True)
            return
        if self._script("start.sh").returncode:
            print(f"  {self.label}: start.sh failed; running setup.sh", flush=True)
            done = self._script("setup.sh")
            if done.returncode:
                raise RuntimeError(f"{self.label} setup.sh failed:\n{done.stderr[-3000:]}")
            done = self._script("start.sh")
            if done.returncode:
                raise RuntimeError(f"{self.label} start.sh failed:\n{done.stderr[-3000:]}")
        self.started = True

    def stop(self) -> None:
        if self.started:
            self._script("stop.sh")
            self.started = False

    def bench(self, warmup: int, duration: int) -> dict[str, Result]:
        """bench.sh, read line by line; the server's CPU is sampled meanwhile, so that the CPU of
        each case's measured part (the DURATION s before its line appears) can be told apart."""
        pid = self.pid()
        samples: list[tuple[float, float]] = []
        stop_sampling = threading.Event()

        def sample() -> None:
            while pid and not stop_sampling.is_set():
                samples.append((time.monotonic(), tree_cpu(pid)))
                stop_sampling.wait(0.1)

        def cpu_at(t: float) -> float:
            before = [c for ts, c in samples if ts <= t]
            return before[-1] if before else float("nan")

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        env = {**os.environ, "WARMUP": str(warmup), "DURATION": str(duration)}
        proc = subprocess.Popen(["bash", str(self.dir / "bench.sh")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
        results: dict[str, Result] = {}
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.monotonic()
            if line.startswith(self.label + " "):  # "KServe 0.21.0 peer (...), date, ..."
                self.label = " ".join(line.split()[:2])
            m = _LINE.match(line)
            case = m and next((c for p, c in LINES.items() if m.group(1).startswith(p)), None)
            if m and case:
                r = Result(float(m.group(2)), float(m.group(3)), float(m.group(4)),
                           int(m.group(5)) + int(m.group(6)))  # fmt: skip
                r.requests = int(r.rps * duration)
                r.cpu_us = (cpu_at(now) - cpu_at(now - duration)) / max(1, r.requests) * 1e6
                results[case] = r
                print(f"  {self.label:<22} {CASES[case][0]:<32} {r}", flush=True)
            elif line.startswith(("correctness", "stateful bookkeeping")):
                print(f"  {self.label:<22} {line.rstrip()}", flush=True)
        stop_sampling.set()
        if proc.wait(timeout=600):
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"{self.label} bench.sh failed:\n{err[-3000:]}")
        return results


def peers_dir(given: str | None) -> Path:
    """The peers' folder: the argument, else $PEERS_DIR; there is no default."""
    where = given or os.environ.get("PEERS_DIR")
    if not where:
        sys.exit("bench/peers.sh: give the peers' folder (bench/peers.sh DIR, or PEERS_DIR=DIR)")
    path = Path(where).expanduser().resolve()
    if not path.is_dir():
        sys.exit(f"bench/peers.sh: {path} is not a directory")
    return path


def run_peer(peer: Peer, warmup: int, duration: int,
             cpus: set[int] | None = None) -> dict[str, Result]:  # fmt: skip
    """start.sh, bench.sh (the server pinned to `cpus` if given), stop.sh."""
    peer.start()
    try:
        pid = peer.pid()
        if cpus and pid:
            pin_tree(pid, cpus)
        return peer.bench(warmup, duration)
    finally:
        peer.stop()


def table(r: dict[str, dict[str, Result]], peers: list[str], cases: list[str]) -> None:
    """req/s per case and server, the best peer, Peephole's ratio, errors, the ASGI fraction."""
    cols = [*peers, "Peephole"]
    head = f"  {'case':<32}" + "".join(f"{c:>18}" for c in cols)
    head += f"  {'best peer':<18}{'ratio':>7}"
    bare = "bare ASGI" in r
    if bare:
        head += f"{'bare ASGI':>12}{'Peephole/ASGI':>15}"
    print(head)
    for case in cases:
        row = f"  {CASES[case][0]:<32}"
        for c in cols:
            res = r.get(c, {}).get(case)
            row += f"{res.rps:>18,.0f}" if res else f"{'-':>18}"
        got = [(r[p][case].rps, p) for p in peers if case in r.get(p, {})]
        ours = r.get("Peephole", {}).get(case)
        if got and ours:
            rps, best = max(got)
            row += f"  {best:<18}{ours.rps / rps:>6.2f}x"
        if bare and ours and case in r["bare ASGI"]:
            ceiling = r["bare ASGI"][case].rps
            row += f"{ceiling:>12,.0f}{ours.rps / ceiling:>14.2f}x"
        print(row)
    errors = "  ".join(f"{c} {sum(x.errors for x in r[c].values())}" for c in cols if c in r)
    print(f"  errors (non-2xx + socket, every case): {errors}")


def summary(rounds: list[dict[str, dict[str, Result]]], peers: list[str], cases: list[str]) -> None:
    """Over several rounds: each case's ratio to its best peer, per round, and the range."""
    print("\nPeephole / best peer of the same round (and the bare ASGI fraction), per round")
    for case in cases:
        rs, fr = [], []
        for r in rounds:
            got = [r[p][case].rps for p in peers if case in r.get(p, {})]
            ours = r.get("Peephole", {}).get(case)
            if got and ours:
                rs.append(ours.rps / max(got))
            if ours and case in r.get("bare ASGI", {}):
                fr.append(ours.rps / r["bare ASGI"][case].rps)
        cells = "  ".join(f"{x:5.2f}x" for x in rs)
        line = f"  {CASES[case][0]:<32} {cells}"
        if rs:
            line += f"   range {min(rs):.2f}-{max(rs):.2f}x"
        if fr:
            line += f"   | of bare ASGI: {'  '.join(f'{x:.2f}x' for x in fr)}"
        print(line)


def _peers_stage(r: dict[str, dict[str, Result]], peers: list[Peer], cases: list[str],
                 args: argparse.Namespace, repo: Path, work: Path) -> None:  # fmt: skip
    """Every peer through its own scripts, one after the other."""
    for peer in peers:
        try:
            got = run_peer(peer, args.warmup, args.duration)
        except RuntimeError as e:  # one peer's failure is reported, not the run's end
            print(f"  {peer.label}: FAILED, left out of this round\n    "
                  + str(e).strip().replace("\n", "\n    ")[-1500:], flush=True)  # fmt: skip
            continue
        r[peer.label] = {c: v for c, v in got.items() if c in cases}


def _ours_stage(r: dict[str, dict[str, Result]], peers: list[Peer], cases: list[str],
                args: argparse.Namespace, repo: Path, work: Path) -> None:  # fmt: skip
    """Peephole, then the bare ASGI app, with the same cases."""
    svc = http_bench.peephole(repo, args.workers)
    try:
        r["Peephole"] = http_bench.run_cases(svc, work, cases, args.warmup, args.duration)
    finally:
        svc.close()
    if not args.no_bare:
        svc = http_bench.bare_asgi(args.workers)
        try:
            r["bare ASGI"] = http_bench.run_cases(svc, work, cases, args.warmup, args.duration)
        finally:
            svc.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dir", nargs="?", help="the peers' folder (else $PEERS_DIR)")
    ap.add_argument("--peers", default=",".join(PEERS), help="which peers, comma-separated")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="Peephole's and the bare app's")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cases", default="t10,t1000,steps")
    ap.add_argument("--no-bare", action="store_true")
    args = ap.parse_args()
    base = peers_dir(args.dir)
    names = [p for p in args.peers.split(",") if p]
    unknown = [p for p in names if p not in PEERS or not (base / p / "bench.sh").is_file()]
    if unknown:
        sys.exit(f"bench/peers.sh: no harness for {', '.join(unknown)} in {base}")
    if not shutil.which("wrk"):
        print("wrk is not installed: nothing measured (apt-get install wrk)")
        return 1
    peers = [Peer(base / p) for p in names]
    cases = [c for c in args.cases.split(",") if c]
    work = Path(tempfile.mkdtemp(prefix="peephole-peers-bench-"))
    rounds: list[dict[str, dict[str, Result]]] = []
    try:
        http_bench.write_bodies(work)
        repo = http_bench.build_repository(work)
        print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
              f"{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}; wrk -t1, {args.duration} s "
              f"per case after {args.warmup} s warm-up; Peephole and the bare ASGI app with "
              f"{args.workers} worker(s)")  # fmt: skip
        for n in range(args.rounds):
            print(f"\nround {n + 1}/{args.rounds}")
            r: dict[str, dict[str, Result]] = {}
            # The box's speed drifts over minutes: every other round runs Peephole and the bare
            # app first, so that no server is always measured in the same part of the run.
            stages = [_peers_stage, _ours_stage] if n % 2 == 0 else [_ours_stage, _peers_stage]
            for stage in stages:
                stage(r, peers, cases, args, repo, work)
            print(f"\nround {n + 1}: req/s")
            table(r, [p.label for p in peers], cases)
            rounds.append(r)
        if args.rounds > 1:
            summary(rounds, [p.label for p in peers], cases)
    finally:
        for peer in peers:
            peer.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
