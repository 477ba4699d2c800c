"""The training CLI end to end: quick smoke training per task, files and card, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app.inference.card import ModelCard, sha256_file
from training.tasks import TASKS
from training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=240)


def _write_csv(path: Path) -> Path:
    t = np.arange(300)
    a, b = np.sin(t / 7.0), np.cos(t / 11.0) * 2 + 5
    path.write_text("time,a,b\n" + "".join(f"{i},{p:.6f},{q:.6f}\n"
                                           for i, p, q in zip(t, a, b, strict=True)))
    return path


def test_tasks_lists_every_task():
    out = _run("tasks")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(TASKS)
    assert all(len(line.split(None, 1)[1]) > 20 for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_quick_training_through_the_cli(task, tmp_path):
    extra: list[str] = []
    if task == "csv":
        csv = _write_csv(tmp_path / "series.csv")
        extra = ["--csv", str(csv), "--features", "a,b", "--targets", "b", "--window", "50",
                 "--name", "my-series"]
    out = _run("train", task, "--out", str(tmp_path / "repo"), "--quick", "--no-progress",
               "--seed", "3", *extra)
    assert out.returncode == 0, out.stderr[-3000:]
    name = "my-series" if task == "csv" else task
    vdir = tmp_path / "repo" / name / "1"
    for f in ("model.onnx", "model.json", "metrics.json", "training_curve.png"):
        assert (vdir / f).is_file(), f
    card = ModelCard.model_validate_json((vdir / "model.json").read_text())
    assert card.name == name and card.version == 1 and card.task == task
    assert card.onnx.sha256 == sha256_file(vdir / "model.onnx")
    t = card.training
    assert t.seed == 3 and t.steps > 0 and t.wall_time_seconds > 0
    assert t.command.startswith(f"python -m training train {task} --out ")
    assert "--quick" in t.command
    assert t.data["generator"]
    assert "test" in t.metrics and "solved" in t.metrics
    metrics = json.loads((vdir / "metrics.json").read_text())
    assert len(metrics["history"]) >= 1 and "val_loss" in metrics["history"][0]
    assert (vdir / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    if task == "mackey-glass":
        assert t.data["tau"] == 17 and t.data["sample_interval"] == 6
        assert card.normalization is not None
        assert "baseline_linear_ar_test_nmse" in t.metrics
    if task == "csv":
        assert card.input_names == ["a", "b"] and card.normalization is not None
        assert card.normalization.input_mean[1] == pytest.approx(5.0, abs=0.5)
    # The next run of the same command gets the next version.
    if task == "adding":
        again = _run("train", task, "--out", str(tmp_path / "repo"), "--quick",
                     "--no-progress", "--seed", "3")
        assert again.returncode == 0, again.stderr[-3000:]
        assert (tmp_path / "repo" / name / "2" / "model.json").is_file()


def test_unknown_task_is_refused():
    out = _run("train", "no-such-task", "--out", "x")
    assert out.returncode != 0 and "invalid choice" in out.stderr


@pytest.mark.parametrize("task", ["adding", "trace-conditioning"])
def test_same_seed_same_weights(task):
    """Training twice in quick mode (one stateless, one stateful task) -> identical weights;
    another seed -> different ones."""
    def weights(seed: int) -> dict[str, torch.Tensor]:
        cfg = TrainConfig(task=task, out=None, seed=seed, quick=True, epochs=1,
                          progress=False)
        return {k: v.clone() for k, v in train(cfg).model.state_dict().items()}

    threads = torch.get_num_threads()
    try:
        one, two, other = weights(5), weights(5), weights(6)
    finally:
        torch.set_num_threads(threads)
    assert one.keys() == two.keys()
    for k in one:
        assert torch.equal(one[k], two[k]), k
    assert any(not torch.equal(one[k], other[k]) for k in one)
