"""Smoke runs of the bench scripts (--quick): they exit 0 and print their ratios.

Not timed assertions: the figures on a shared CI box are noise; docs/PERFORMANCE.md has the
real runs. Together well under 30 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*cmd: str, timeout: int = 120) -> str:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_http_bench_quick() -> None:
    out = _run("bash", "bench/http.sh", "--quick")
    assert "Peephole vs bare FastAPI" in out
    for case in ("predict T=10", "predict T=1000", "1 step x 64 sessions"):
        assert any(case in ln and "Peephole errors 0 " in ln and "CPU per request" in ln
                   for ln in out.splitlines()), case  # fmt: skip


def test_engine_bench_quick() -> None:
    out = _run(sys.executable, "bench/engine.py", "--quick", "--random", "--batches", "1")
    assert "ort/bare" in out and "eager/ort" in out


def test_cuda_graph_quick() -> None:
    """The CPU half of bench/cuda_placement.py: the cuda graph has no LSTM node and answers
    like model.onnx (placement itself is test_cuda_placement's)."""
    out = _run(sys.executable, "bench/cuda_placement.py", "--quick")
    assert "model.cuda.onnx operators" in out and "max abs diff" in out
    assert "LSTM" not in out.split("operators", 1)[1].split("\n", 1)[0]


def _cuda_provider() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(
    not _cuda_provider(),
    reason="needs onnxruntime-gpu with CUDAExecutionProvider and a GPU (placement unverified)",
)
def test_cuda_placement() -> None:
    out = _run(sys.executable, "bench/cuda_placement.py", "--quick", "--require-cuda")
    assert "ALL NODES ON CUDA" in out


def test_batching_bench_quick() -> None:
    out = _run(sys.executable, "bench/batching.py", "--quick")
    assert out.count("batched/unbatched") == 2 and out.count("lone client") == 2


def test_million_bench_quick() -> None:
    out = _run(sys.executable, "bench/million.py", "--quick", "--parts", "size,gather")
    assert "bytes per session" in out and "ratio" in out and "batcher's own share" in out


def test_attacks_quick() -> None:
    """Each attack meets its refusal (the --quick run scales the limits to its small loads):
    431, 408, 503 for bodies at once and past the connection bound, 413 for internals."""
    out = _run(sys.executable, "bench/attacks.py", "--quick", timeout=240)
    cells = [ln.split(" | ") for ln in out.splitlines() if ln.startswith("| ") and "---" not in ln]
    answers = [(c[0][2:], c[1]) for c in cells[1:] if len(c) == 7]
    assert len(answers) == 11, out
    routes = ("/v1 predict", "/v1 steps", "/v2 JSON", "/v2 binary", "WebSocket")
    assert all(a == "200" for case, a in answers if case.startswith(routes)), out
    got = {case.split(" (")[0]: a for case, a in answers if not case.startswith(routes)}
    assert "x 200" in got["8 of the zeros predicts at once"], out
    assert "x 503" in got["8 of the zeros predicts at once"], out
    assert got["predict with internals"] == "413", out
    assert got["4 MB header"] == "1 x 431", out
    assert "x 503" in got["100 connections that send nothing"], out
    assert got["50 bodies that stall"] == "50 x 408", out


def test_peers_bench_needs_the_peers_folder() -> None:
    """bench/peers.sh has no default location for the peers' harnesses: it says how to give it."""
    env = {k: v for k, v in os.environ.items() if k != "PEERS_DIR"}
    done = subprocess.run(["bash", "bench/peers.sh"], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=60)  # fmt: skip
    assert done.returncode != 0 and "PEERS_DIR" in done.stderr
    done = subprocess.run(["bash", "bench/peers.sh", str(ROOT / "docs")], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert done.returncode != 0 and "no harness for torchserve" in done.stderr
