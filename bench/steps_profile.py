"""In-process CPU per step: the real app, its lifespan and models/, no sockets.

    python bench/steps_profile.py                      # 64 sessions, 300 rounds of 64 steps
    python bench/steps_profile.py --profile 25         # + the 25 costliest functions (cProfile)
    python bench/steps_profile.py --baseline /tmp/base # + the same bench on another tree,
        # rounds interleaved (mkdir /tmp/base && git archive main | tar -x -C /tmp/base)

Each round sends one `POST /v1/sessions/{id}/steps` (`{"inputs": [[1.0]], "offset": k}`,
the offset the session is at) for each of `--sessions` sessions of `--model`, all at once
(asyncio.gather of the ASGI calls, as uvicorn hands over a burst of requests parsed in one
loop iteration), on uvloop as the server runs, through `app.main.create_app()`'s ASGI app:
the fast path, the data plane, the batcher, the memory session store, ONNX Runtime. What
this leaves out is uvicorn's HTTP handling and the socket writes (bench/http.sh measures
those with the real server).
Reported: CPU seconds (time.process_time) per step over the timed rounds, best and median
of `--repeat` blocks: the box is shared, and the best block is the least disturbed.

With `--baseline DIR`, the same file runs as a child process over DIR's `app` (one child
per block, alternating with this tree's), so both trees see the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


async def _call(app: Any, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    """One HTTP request through the ASGI app: (status, body)."""
    sent = False
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # (a disconnect never comes)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                                     (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    await app(scope, receive, send)
    return status, b"".join(chunks)


async def _measure(model: str, sessions: int, rounds: int, warmup: int,
                   profile: cProfile.Profile | None) -> dict[str, float]:  # fmt: skip
    from app.config import Settings
    from app.main import create_app

    tree = Path(os.environ.get("PEEPHOLE_TREE", ROOT))
    settings = Settings(model_repository=tree / "models", model_control="none")
    app = create_app(settings)
    name, _, version = model.partition("/")
    async with app.router.lifespan_context(app):
        create = json.dumps({"model": name, "version": int(version)}).encode()
        ids = []
        for _ in range(sessions):
            status, out = await _call(app, "POST", "/v1/sessions", create)
            assert status == 201, (status, out)
            ids.append(json.loads(out)["session_id"])
        paths = [f"/v1/sessions/{sid}/steps" for sid in ids]

        async def one_round(k: int) -> None:
            body = b'{"inputs": [[1.0]], "offset": %d}' % k
            answers = await asyncio.gather(*(_call(app, "POST", p, body) for p in paths))
            bad = [a for a in answers if a[0] != 200]
            assert not bad, bad[:1]

        for k in range(warmup):
            await one_round(k)
        if profile is not None:
            profile.enable()
        cpu, wall = time.process_time(), time.perf_counter()
        for k in range(warmup, warmup + rounds):
            await one_round(k)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if profile is not None:
            profile.disable()
    steps = rounds * sessions
    return {"cpu_us": cpu / steps * 1e6, "wall_us": wall / steps * 1e6}


def _settings_quiet() -> None:
    """Start-up logging off, the service's GC settings on (as `python -m app` runs)."""
    import logging

    logging.disable(logging.WARNING)
    os.environ.setdefault("PEEPHOLE_LOG_LEVEL", "warning")
    try:
        from app.__main__ import _settle_gc
    except ImportError:
        return
    _settle_gc()


def _block(args: argparse.Namespace, profile: cProfile.Profile | None = None) -> dict[str, float]:
    _settings_quiet()
    work = _measure(args.model, args.sessions, args.rounds, args.warmup, profile)
    try:  # the server's event loop (app/edge/server.py picks uvloop when it is installed)
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)


def _child(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    """One block in a fresh process over `tree`'s app."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", args.model,
           "--sessions", str(args.sessions), "--rounds", str(args.rounds),
           "--warmup", str(args.warmup)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree), "PEEPHOLE_TREE": str(tree)}
    out = subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="mackey-glass/1")
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3, help="blocks per tree")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="print the N functions of most own time (one extra block, this tree)",
    )
    ap.add_argument("--baseline", type=Path, help="also measure this checkout, interleaved")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, os.environ.get("PEEPHOLE_TREE", str(ROOT)))
        print(json.dumps(_block(args)))
        return
    sys.path.insert(0, str(ROOT))
    trees = {"this tree": ROOT}
    if args.baseline is not None:
        trees["baseline"] = args.baseline.resolve()
    print(f"{args.model}: {args.sessions} sessions x {args.rounds} rounds of one step each "
          f"(after {args.warmup}), {args.repeat} blocks per tree, interleaved")  # fmt: skip
    got: dict[str, list[float]] = {label: [] for label in trees}
    for _ in range(args.repeat):
        for label, tree in trees.items():
            got[label].append(_child(tree, args)["cpu_us"])
    for label, cpu in got.items():
        print(
            f"  {label:10s} CPU per step: best {min(cpu):6.1f} us, median "
            f"{statistics.median(cpu):6.1f} us  ({', '.join(f'{c:.0f}' for c in cpu)})"
        )
    if args.baseline is not None:
        this, base = got["this tree"], got["baseline"]
        ratios = [b / t for b, t in zip(base, this, strict=True)]
        print(
            f"  baseline / this tree, CPU per step: best {min(base) / min(this):.2f}x, "
            f"per block {', '.join(f'{r:.2f}' for r in ratios)}"
        )
    if args.profile:
        prof = cProfile.Profile()
        _block(args, prof)
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(args.profile)
        print(text.getvalue())


if __name__ == "__main__":
    main()
