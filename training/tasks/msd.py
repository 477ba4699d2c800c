"""Measuring spike delays (MSD; Gers, Schraudolph & Schmidhuber 2002).

The input is a spike train: 1 at the spike steps, 0 elsewhere, with spikes at
T(n) = T(n-1) + F + I(n), F = 10, I(n) uniform in {0, 1}. At each spike n >= 1 the target is
I(n): was the last interval F or F + 1 steps? The output only counts at the spikes (mask).
The train runs on as one continuous stream (no resets), so the network has to time every
interval from the previous spike on its own. Solved (Gers 2002) when the error is < 0.49 on
1,000 consecutive test spikes. The first spike is at a step uniform in 0..F-1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.evaluation import numpy_loss, predict

from .base import (
    Check,
    Reproduction,
    Setup,
    Split,
    Task,
    TaskData,
    TrainDefaults,
    longest_run,
    masked_mse,
)

F = 10
ERROR_LIMIT = 0.49
RUN_SPIKES = 1000


def spike_train(
    steps: int,
    rng: np.random.Generator,
    f: int = F,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inputs [steps, 1], targets [steps, 1], mask [steps], spike times."""
    times = [int(rng.integers(0, f))]
    while True:
        nxt = times[-1] + f + int(rng.integers(0, 2))
        if nxt >= steps:
            break
        times.append(nxt)
    t = np.asarray(times)
    x = np.zeros((steps, 1))
    y = np.zeros((steps, 1))
    mask = np.zeros(steps)
    x[t, 0] = 1.0
    y[t[1:], 0] = np.diff(t) - f
    mask[t[1:]] = 1.0
    return x, y, mask, t


def _streams(n: int, steps: int, rng: np.random.Generator) -> Split:
    xs, ys, ms, _ = zip(*(spike_train(steps, rng) for _ in range(n)), strict=True)
    return Split(np.stack(xs), np.stack(ys), np.stack(ms))


class MeasuringSpikeDelays(Task):
    name = "msd"
    description = (
        "measuring spike delays (Gers 2002): spikes every F + I(n) steps, F = 10; "
        "output I(n) at each spike; 1,000 consecutive test spikes right"
    )
    loss = "bce"
    # Gers 2002 solved MSD with 1 block x 1 cell (logistic2 g, identity h) after many
    # sequences; in our ~10-minute budget that network stayed at chance (two attempts, 100
    # epochs), while 4 tanh blocks learn it in ~10 epochs (measured: 100% of validation spikes
    # from epoch 16; 1,201 consecutive test spikes right). Chunks of 25 steps: an interval is at
    # most 11 steps, and short chunks give many updates per epoch.
    architecture = {
        "blocks": 4,
        "cells_per_block": 1,
        "g": "tanh",
        "h": "tanh",
        "output_activation": "logistic",
        "forget_bias": 1.0,
    }
    defaults = TrainDefaults(
        epochs=60,
        batch_size=16,
        lr=3e-3,
        clip=1.0,
        patience=60,
        schedule="plateau",
        stateful=True,
        chunk_len=25,
        quick_epochs=2,
    )
    monitor = "spike_accuracy"
    monitor_mode = "max"

    def generate(self, seed: int, quick: bool = False, **options: Any) -> TaskData:
        rng = np.random.default_rng(seed)
        n_streams, train_steps, val_steps, test_steps = (
            (4, 420, 600, 1200) if quick else (16, 2100, 6300, 12600)
        )
        return TaskData(
            train=_streams(n_streams, train_steps, rng),
            val=_streams(1, val_steps, rng),
            test=_streams(1, test_steps, rng),
            data={
                "generator": "msd",
                "F": F,
                "I": [0, 1],
                "first_spike": [0, F - 1],
                "streams": {
                    "train": [n_streams, train_steps],
                    "val": [1, val_steps],
                    "test": [1, test_steps],
                },
                "seed": seed,
            },
            input_names=["spike"],
            output_names=["delay_bit"],
            encoding={
                "inputs": {
                    "columns": ["spike"],
                    "meaning": "1.0 at a spike step, 0.0 elsewhere; spikes at "
                    "T(n) = T(n-1) + 10 + I(n), I(n) in {0, 1}; one "
                    "continuous train (carry the state between calls)",
                },
                "outputs": {
                    "columns": ["delay_bit"],
                    "meaning": "I(n) = T(n) - T(n-1) - 10, read at each spike n >= 1 "
                    "(outputs between spikes are not trained)",
                },
                "correct": "|output - I(n)| < 0.49; solved when 1,000 consecutive spikes "
                "are correct",
            },
        )

    def evaluate(self, pred: np.ndarray, split: Split, data: TaskData) -> dict[str, Any]:
        m = split.mask.astype(bool)
        ok = [
            np.abs(p[mm, 0] - t[mm, 0]) < ERROR_LIMIT
            for p, t, mm in zip(pred, split.y, m, strict=True)
        ]
        return {
            "mse": masked_mse(pred, split.y, split.mask),
            "spike_accuracy": float(np.concatenate(ok).mean()),
            "spikes": int(m.sum()),
            "longest_ok_spike_run": int(min(longest_run(o)[0] for o in ok)),
        }

    def solved(self, metrics: dict[str, Any]) -> bool:
        return metrics.get("longest_ok_spike_run", 0) >= RUN_SPIKES

    online_run = RUN_SPIKES

    def step_ok(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        return np.abs(pred[..., 0] - target[..., 0]) < ERROR_LIMIT

    def reproduction(self, quick: bool = False) -> Reproduction:
        steps, run = (1_100, 100) if quick else (11_000, RUN_SPIKES)

        def check(model: Any, rng: np.random.Generator) -> Check:
            split = one_stream(rng, steps)
            pred = predict(model, split.x, batch=512)
            m = split.mask[0].astype(bool)
            ok = np.abs(pred[0, m, 0] - split.y[0, m, 0]) < ERROR_LIMIT
            longest = longest_run(ok)[0]
            return Check(
                longest >= run,
                float(longest),
                numpy_loss("bce", pred, split),
                {"of": int(m.sum()), "wrong": int((~ok).sum())},
            )

        return Reproduction(
            name=self.name,
            loss="bce",
            unit="spikes",
            paper=Setup(
                "paper",
                {
                    "blocks": 1,
                    "cells_per_block": 1,
                    "g": "logistic2",
                    "h": "identity",
                    "output_activation": "logistic",
                    "init_range": 0.1,
                },
                "sgd",
                0.1,
                1,
                chunk=25,
                objective="sse",
                lr_source="assumed (not the paper's: we had no rate from it)",
            ),
            # The task's set-up: 4 tanh blocks, 25-step chunks, a constant rate: the net
            # sits at chance for its first ~30,000 spikes, and a plateau schedule (measured)
            # decays the rate there before it can leave.
            modern=Setup(
                "modern",
                {
                    "blocks": 4,
                    "cells_per_block": 1,
                    "g": "tanh",
                    "h": "tanh",
                    "output_activation": "logistic",
                    "forget_bias": 1.0,
                },
                "adam",
                3e-3,
                16,
                clip=1.0,
                chunk=25,
                lr_source="ours",
            ),
            figure="solved with 1 block x 1 cell (Gers 2002): error < 0.49 on 1,000 "
            "consecutive test spikes",
            criterion="error < 0.49 on 1,000 consecutive spikes of a fresh train",
            metric_name="longest right run",
            eval_every=2000,
            max_units=2_000_000,
            stream=one_stream,
            check=check,
        )


def one_stream(rng: np.random.Generator, steps: int) -> Split:
    """One fresh spike train as a split of one stream."""
    x, y, mask, _ = spike_train(steps, rng)
    return Split(x[None], y[None], mask[None])
