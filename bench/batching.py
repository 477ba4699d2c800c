"""Dynamic batching, in process: streaming sessions through the data plane, batched vs not.

    python bench/batching.py            # 64 sessions x 200 one-step calls, plain and lnsc models
    python bench/batching.py --quick    # smoke run

The data plane (app/dataplane.py) with the memory session store and the real runner, no HTTP:
S concurrent "clients", each stepping its own session one call at a time (the next call when
the previous answer is back), as streaming clients do. Runs:
- unbatched: BatchingRunner(max_size=1), every call its own ONNX Runtime run;
- batched: max_size=64 (the default), calls that meet in one event-loop round share a run.
Reports steps per second (and the ratio), the mean batch size, and the latency of a lone call
(one client, 200 calls) unbatched, batched, and batched with max_wait_ms = 2 (which must not
delay a lone call: the engine is idle when it arrives). The models are seeded random ones of
the HTTP benchmark's size (plain, 32 blocks) and the shipped lnsc size (2 blocks x 2 cells,
Scan lowering: about 20 small operators per step, where batching pays most).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.config import Settings  # noqa: E402
from app.dataplane import DataPlane  # noqa: E402
from app.inference.batcher import BatchingRunner  # noqa: E402
from app.inference.registry import ModelRegistry  # noqa: E402
from app.inference.repository import scan_repository  # noqa: E402
from app.sessions.memory import MemorySessionStore  # noqa: E402


def build(repo: Path) -> None:
    import torch

    from training.export import export_model
    from training.model import PeepholeConfig, PeepholeLSTM

    configs = {
        "plain32": PeepholeConfig(input_size=1, output_size=1, blocks=32, g="tanh", h="tanh",
                                  output_activation="linear"),
        "lnsc2x2": PeepholeConfig(input_size=2, output_size=1, blocks=2, cells_per_block=2),
    }  # fmt: skip
    for name, cfg in configs.items():
        torch.manual_seed(0)
        export_model(PeepholeLSTM(cfg).eval(), repo, name, task="bench",
                     training={"seed": 0, "data": {"generator": "random"}},
                     input_names=[f"x{i}" for i in range(cfg.input_size)],
                     output_names=["y"], internals=False)  # fmt: skip


class Sizes:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, engine: object, batch: int, seconds: float) -> None:
        self.sizes.append(batch)


async def streaming(
    dp: DataPlane, model: str, sessions: int, calls: int
) -> tuple[float, list[float]]:
    """Steps per second of `sessions` concurrent clients, and every call's latency."""
    engine = dp.model(model)
    ids = [(await dp.create_session(model)).session_id for _ in range(sessions)]
    x = np.full((1, engine.input_size), 0.5, np.float32)
    lat: list[float] = []

    async def client(sid: str) -> None:
        for k in range(calls):
            t0 = time.perf_counter()
            r = await dp.step(sid, x, k)
            lat.append(time.perf_counter() - t0)
            assert r.session.offset == k + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client(sid) for sid in ids))
    return sessions * calls / (time.perf_counter() - t0), lat


async def run(repo: Path, model: str, max_size: int, max_wait_ms: float, sessions: int,
              calls: int) -> tuple[float, list[float], float]:  # fmt: skip
    settings = Settings(model_repository=repo, provider="cpu", _env_file=None)
    registry = ModelRegistry.build(scan_repository(repo), "cpu", 1)
    store = MemorySessionStore(max_sessions=100000)
    sizes = Sizes()
    runner = BatchingRunner(2, sizes, max_size=max_size, max_wait_ms=max_wait_ms)
    dp = DataPlane(registry, store, runner, settings)
    try:
        await streaming(dp, model, sessions, 5)  # warm-up (and the runner's cost model)
        sizes.sizes.clear()
        rate, lat = await streaming(dp, model, sessions, calls)
    finally:
        runner.close()
    return rate, lat, statistics.mean(sizes.sizes) if sizes.sizes else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.sessions, args.calls = 16, 20
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        build(repo)
        for model in ("plain32", "lnsc2x2"):
            un, un_lat, _ = asyncio.run(run(repo, model, 1, 0, args.sessions, args.calls))
            ba, ba_lat, mean_b = asyncio.run(run(repo, model, 64, 0, args.sessions, args.calls))
            print(f"{model}: {args.sessions} streaming sessions x {args.calls} steps: unbatched "
                  f"{un:8.0f} steps/s, batched {ba:8.0f} steps/s (mean batch {mean_b:.1f}) "
                  f"-> batched/unbatched {ba / un:.2f}x")  # fmt: skip
            lone = {}
            for label, size, wait in (("unbatched", 1, 0.0), ("batched", 64, 0.0),
                                      ("batched, max wait 2 ms", 64, 2.0)):  # fmt: skip
                _, lat, _ = asyncio.run(run(repo, model, size, wait, 1, args.calls))
                lone[label] = statistics.median(lat) * 1e6
            base = lone["unbatched"]
            print(
                f"{model}: lone client, median latency per call: "
                + ", ".join(f"{k} {v:.0f} us ({v / base:.2f}x)" for k, v in lone.items())
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
