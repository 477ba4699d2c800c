"""Model control under load (bench/reload.py's scenarios, small): correctness, not timing.

While predict and session traffic runs against a `python -m app` process in poll mode,
version 2 arrives half-written and becomes the default once whole, a version with a wrong
sha256 is refused, version 1 is removed with sessions streaming on it and drains: no failed
request but the documented 410s after the drain deadline, readiness never drops, every
session's outputs equal a whole-sequence run of its own version. Then the memory an
unloaded version held goes back (RSS, with a generous bound).
"""

from __future__ import annotations

from pathlib import Path

from bench.reload import export_random, run_memory, run_reload
from tests.repo import PLAIN, RepoModels


def test_reload_under_traffic(models: RepoModels, tmp_path: Path) -> None:
    rep = run_reload(models.repo / PLAIN / "1", models.repo / PLAIN / "2", tmp_path, poll=0.2,
                     drain=2.0, steady=1.5, predictors=1, streams=3, long_streams=2)  # fmt: skip
    assert rep.problems() == []
    assert rep.requests["step"] > 50 and rep.requests["predict"] > 20
    assert rep.drain_answers >= 1  # sessions still streaming on version 1 at its deadline
    assert rep.ready_probes > 20 and rep.ready_failures == 0


def test_unload_returns_memory(models: RepoModels, tmp_path: Path) -> None:
    big = export_random(tmp_path / "src", "big", 1, blocks=256, seed=3, check=False)
    mem = run_memory(models.repo / PLAIN / "1", big, tmp_path, copies=6)
    grew = mem.rss_loaded_mb - mem.rss_before_mb
    assert grew > 8, mem  # six ONNX Runtime sessions of a 256-block network
    assert mem.rss_after_mb - mem.rss_before_mb < 0.5 * grew, mem
