"""training/train.py: repeatable, stops when it should, options folded over task defaults."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from training.errors import UserError
from training.tasks import get_task
from training.train import TrainConfig, resolve, train


@pytest.mark.parametrize("task", ["adding", "trace-conditioning"])
def test_same_seed_same_weights(task):
    """Training twice in quick mode (one stateless, one stateful task) -> identical weights;
    another seed -> different ones."""

    def weights(seed: int) -> dict[str, torch.Tensor]:
        cfg = TrainConfig(task=task, out=None, seed=seed, quick=True,
                          overrides={"epochs": 1}, progress=False)  # fmt: skip
        return {k: v.clone() for k, v in train(cfg).model.state_dict().items()}

    threads = torch.get_num_threads()
    one, two, other = weights(5), weights(5), weights(6)
    assert torch.get_num_threads() == threads  # restored
    for k in one:
        assert torch.equal(one[k], two[k]), k
    assert any(not torch.equal(one[k], other[k]) for k in one)


def test_resolve_folds_the_given_options_over_the_task_defaults():
    task = get_task("msd")
    hp = resolve(TrainConfig(task="msd", overrides={"lr": 0.1, "chunk_len": 7}), task)
    assert hp == replace(task.defaults, lr=0.1, chunk_len=7)
    assert resolve(TrainConfig(task="msd", quick=True), task).epochs == task.defaults.quick_epochs
    assert resolve(TrainConfig(task="msd", quick=True, overrides={"epochs": 3}), task).epochs == 3
    with pytest.raises(UserError, match="--lr"):
        resolve(TrainConfig(task="msd", overrides={"lr": 0.0}), task)
    with pytest.raises(ValueError, match="unknown hyper-parameters"):
        resolve(TrainConfig(task="msd", overrides={"learning_rate": 1}), task)


def test_stops_on_patience_and_on_the_time_budget():
    cfg = TrainConfig(task="adding", out=None, quick=True, progress=False,
                      overrides={"epochs": 50, "patience": 1, "lr": 1e-9})  # fmt: skip
    final = train(cfg).metrics["final"]
    assert final["stopped"] == "patience" and final["epochs_run"] <= 3
    cfg = TrainConfig(task="adding", out=None, quick=True, progress=False,
                      overrides={"epochs": 50, "max_minutes": 1e-6})  # fmt: skip
    final = train(cfg).metrics["final"]
    assert final["stopped"] == "budget" and final["epochs_run"] == 1
