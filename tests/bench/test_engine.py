"""Smoke test of bench/engine.py (it must keep running as the engine changes)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "engine.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_engine", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_random_run(capsys: pytest.CaptureFixture[str]) -> None:
    _load().main(["--quick", "--random", "--batches", "2"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "T=50" in ln]
    assert len(lines) == 2
    assert "ort/bare" in lines[0] and "eager/ort" in lines[1]


def test_missing_model_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _load().main([str(tmp_path / "nope")])
