"""The adding problem (Hochreiter & Schmidhuber 1997, experiment 4, Table 7), T = 100.

Each step is a pair (value, marker): values uniform in [-1, 1]; two steps are marked with
marker 1.0: the first at a position uniform in 1..9 (among the first ten, position 0
excluded), the second uniform in 1..T/2-1 (distinct from the first); the first and last
steps carry marker -1 (the 1997 set-up's delimiters); all other markers are 0. A sequence has
a length uniform in T..1.1T. The target, at the last step only, is 0.5 + (X1 + X2) / 4, where
X1, X2 are the two marked values. Correct: |error| < 0.04 (1997: solved when at most 1 of
2,560 test sequences is wrong).

Sequences of different lengths are padded at the end; the mask marks each one's last step,
and the network runs forward in time, so padding after it changes nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.evaluation import numpy_loss, predict

from .base import (
    LSTM1997,
    Check,
    Reproduction,
    Setup,
    Split,
    Task,
    TaskData,
    TrainDefaults,
    masked_mse,
)

TOLERANCE = 0.04


def adding_sequences(n: int, t_min: int, rng: np.random.Generator) -> tuple[Split, np.ndarray]:
    """n sequences; also returns their lengths."""
    t_max = t_min + t_min // 10
    lengths = rng.integers(t_min, t_max + 1, size=n)
    x = np.zeros((n, t_max, 2))
    y = np.zeros((n, t_max, 1))
    mask = np.zeros((n, t_max))
    for i, length in enumerate(lengths):
        x[i, :length, 0] = rng.uniform(-1.0, 1.0, size=length)
        first = int(rng.integers(1, 10))
        second = first
        while second == first:
            second = int(rng.integers(1, t_min // 2))
        x[i, 0, 1] = x[i, length - 1, 1] = -1.0
        x[i, [first, second], 1] = 1.0
        y[i, length - 1, 0] = 0.5 + (x[i, first, 0] + x[i, second, 0]) / 4.0
        mask[i, length - 1] = 1.0
    return Split(x, y, mask), lengths


class Adding(Task):
    name = "adding"
    description = (
        "adding problem, T = 100: remember two marked values over ~100 steps, output "
        "0.5 + (X1 + X2)/4 at the end; correct when |error| < 0.04"
    )
    loss = "mse"
    # The 1997 net was 2 blocks x 2 cells trained for 74,000 sequences; in our budget that
    # net stayed on the predict-the-mean plateau (loss 0.041 = target variance) for 28 epochs.
    # 8 tanh blocks with a linear output leave the plateau after ~7 epochs (measured: 3 of
    # 1,000 validation sequences wrong at epoch 30 with a constant lr); the cosine decay
    # then refines the sum.
    architecture = {
        "blocks": 8,
        "cells_per_block": 1,
        "g": "tanh",
        "h": "tanh",
        "output_activation": "linear",
        "input_to_output": True,
        "forget_bias": 2.0,
    }
    defaults = TrainDefaults(
        epochs=40, batch_size=64, lr=3e-3, clip=1.0, patience=40, schedule="cosine", quick_epochs=1
    )
    monitor = "loss"
    t_min = 100

    def generate(self, seed: int, quick: bool = False, **options: Any) -> TaskData:
        rng = np.random.default_rng(seed)
        t_min = 20 if quick else self.t_min
        sizes = (
            {"train": 256, "val": 64, "test": 64}
            if quick
            else {"train": 10000, "val": 1000, "test": 2560}
        )
        splits = {k: adding_sequences(n, t_min, rng)[0] for k, n in sizes.items()}
        return TaskData(
            **splits,
            data={
                "generator": "adding",
                "T": t_min,
                "length": [t_min, t_min + t_min // 10],
                "first_marker": [1, 9],
                "second_marker": [1, t_min // 2 - 1],
                "delimiters": -1.0,
                "sequences": sizes,
                "seed": seed,
            },
            input_names=["value", "marker"],
            output_names=["sum"],
            encoding={
                "inputs": {
                    "columns": ["value", "marker"],
                    "value": "uniform in [-1, 1] at every step",
                    "marker": "1.0 at the two values to add (X1, X2), -1.0 at the first "
                    "and last steps, 0.0 elsewhere",
                },
                "outputs": {
                    "columns": ["sum"],
                    "meaning": "0.5 + (X1 + X2) / 4, read at the LAST step only "
                    "(earlier outputs are not trained)",
                },
                "correct": "|output - target| < 0.04; solved when at most 1 of 2,560 "
                "sequences is wrong",
            },
        )

    def evaluate(self, pred: np.ndarray, split: Split, data: TaskData) -> dict[str, Any]:
        m = split.mask.astype(bool)
        err = np.abs(pred[..., 0][m] - split.y[..., 0][m])
        return {
            "mse": masked_mse(pred, split.y, split.mask),
            "accuracy": float((err < TOLERANCE).mean()),
            "wrong": int((err >= TOLERANCE).sum()),
        }

    def solved(self, metrics: dict[str, Any]) -> bool:
        return metrics.get("wrong", 1 << 30) <= 1

    def reproduction(self, quick: bool = False) -> Reproduction:
        n, allowed = (256 if quick else 2560), 1

        def sample(rng: np.random.Generator, count: int) -> Split:
            return adding_sequences(count, self.t_min, rng)[0]

        def check(model: Any, rng: np.random.Generator) -> Check:
            split = sample(rng, n)
            pred = predict(model, split.x, batch=512)
            m = split.mask.astype(bool)
            err = np.abs(pred[..., 0][m] - split.y[..., 0][m])
            wrong = int((err >= TOLERANCE).sum())
            return Check(
                wrong <= allowed,
                float(wrong),
                numpy_loss("mse", pred, split),
                {"of": n, "max_error": float(err.max())},
            )

        return Reproduction(
            name=self.name,
            loss="mse",
            unit="sequences",
            paper=Setup(
                "paper",
                {
                    **LSTM1997,
                    "blocks": 2,
                    "cells_per_block": 2,
                    "init_range": 0.1,
                    "gate_bias_step": 3.0,
                },
                "sgd",
                0.5,
                1,
                objective="sse",
                lr_source="1997 experiment 4 (2 blocks x 2 cells, lr 0.5)",
            ),
            # As models/adding/1: the task's 8 tanh blocks with a linear output and the
            # input fed to it, without forget gates (the 1997 cell; with them, bias 2,
            # 0.88^100 of the memory survives ~100 steps) and with staggered gate biases.
            modern=Setup(
                "modern",
                {
                    "blocks": 8,
                    "cells_per_block": 1,
                    "forget_gate": False,
                    "gate_bias_step": 1.0,
                    "g": "tanh",
                    "h": "tanh",
                    "output_activation": "linear",
                    "input_to_output": True,
                },
                "adam",
                1e-2,
                16,
                clip=1.0,
                cosine=70_000,
                lr_source="ours",
                note="cosine decay over 70,000 sequences, as models/adding/1",
            ),
            figure="<= 1 wrong of 2,560 after 74,000 training sequences (1997, Table 7)",
            criterion="<= 1 of 2,560 fresh sequences with |error| >= 0.04",
            metric_name="wrong",
            eval_every=2000,
            max_units=300_000,
            sample=sample,
            check=check,
        )
