"""What every task provides: seeded data splits, card metadata, defaults, metric, criterion.

A task turns a seed into `TaskData` (float32 arrays `[N, T, I]` inputs, `[N, T, K]` targets
and a `[N, T]` mask of the steps that count in the loss and the metrics), and knows how to
judge predictions on a split. `training/train.py` is task-agnostic: everything specific
(loss, stateful streams, normalisation, criterion) is declared here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

Loss = Literal["mse", "bce", "ce"]


@dataclass
class Split:
    """One split. `mask[n, t] = 1` where step t of sequence n counts in loss and metrics."""

    x: np.ndarray  # [N, T, I] float32
    y: np.ndarray  # [N, T, K] float32
    mask: np.ndarray  # [N, T] float32 (0 or 1)

    def __post_init__(self) -> None:
        self.x = np.ascontiguousarray(self.x, dtype=np.float32)
        self.y = np.ascontiguousarray(self.y, dtype=np.float32)
        self.mask = np.ascontiguousarray(self.mask, dtype=np.float32)
        n, t, _ = self.x.shape
        if self.y.shape[:2] != (n, t) or self.mask.shape != (n, t):
            raise ValueError(f"inconsistent split shapes {self.x.shape} {self.y.shape} "
                             f"{self.mask.shape}")

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class TaskData:
    """The three splits plus what the model card needs to know about the data."""

    train: Split
    val: Split
    test: Split
    data: dict[str, Any]  # card `training.data`: generator name and all its parameters
    input_names: list[str]
    output_names: list[str]
    # Raw-unit statistics when the splits are normalised (keys of card.Normalization).
    # The exporter bakes them into the graph so the served model takes raw units.
    normalization: dict[str, list[float]] | None = None
    encoding: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # task-private (e.g. raw series)


@dataclass(frozen=True)
class TrainDefaults:
    """Default hyper-parameters; each is a CLI flag of `python -m training train`."""

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-2
    clip: float = 1.0  # global gradient-norm clip
    patience: int = 10  # epochs without validation improvement before stopping
    weight_decay: float = 0.0
    schedule: Literal["plateau", "cosine", "none"] = "plateau"
    # Stateful streams: the training split is a few long streams cut into chunks of
    # `chunk_len` steps; the state is carried (detached) from chunk to chunk (truncated
    # BPTT), as in online training on one continuous experience.
    stateful: bool = False
    chunk_len: int = 100
    # bce only: weight of the positive targets (class balance for rare events).
    pos_weight: float = 1.0
    # --quick: the smoke-test budget (tiny data, one or two epochs).
    quick_epochs: int = 2


class Task:
    """Base class; subclasses set the class attributes and implement `generate`/`evaluate`."""

    name: ClassVar[str]
    description: ClassVar[str]
    loss: ClassVar[Loss]
    # Knobs of card.Architecture except input_size/output_size.
    architecture: ClassVar[dict[str, Any]]
    defaults: ClassVar[TrainDefaults] = TrainDefaults()
    # The metric early stopping and model selection watch ("loss" = validation loss),
    # and whether larger is better for it.
    monitor: ClassVar[str] = "loss"
    monitor_mode: ClassVar[Literal["min", "max"]] = "min"
    # Online criterion on stateful streams: this many consecutive counted steps for which
    # `step_ok` holds (None: the task has no online criterion).
    online_run: ClassVar[int | None] = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Task-specific CLI options (only `csv` has some)."""

    def generate(self, seed: int, quick: bool = False, **options: Any) -> TaskData:
        raise NotImplementedError

    def evaluate(self, pred: np.ndarray, split: Split, data: TaskData) -> dict[str, Any]:
        """Metrics of predictions `pred` (after the output activation, model units)."""
        raise NotImplementedError

    def solved(self, metrics: dict[str, Any]) -> bool:
        """The task's success criterion on the test metrics."""
        raise NotImplementedError

    def report(self, model: Any, data: TaskData, test: dict[str, Any]) -> dict[str, Any]:
        """Extra final metrics that need the model itself (baselines, probes); `test` holds
        the test metrics."""
        return {}

    def step_ok(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Per-step success [N, T] for the online criterion (see `online_run`)."""
        raise NotImplementedError


def masked_mse(pred: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    m = mask.astype(bool)
    return float(np.mean((pred[m] - y[m]) ** 2))


def longest_run(ok: np.ndarray) -> tuple[int, int]:
    """Length of the longest run of True in a 1-D array, and the index where it ends (+1)."""
    best, best_end, run = 0, 0, 0
    for i, v in enumerate(ok):
        run = run + 1 if v else 0
        if run > best:
            best, best_end = run, i + 1
    return best, best_end


def first_run_end(ok: np.ndarray, length: int) -> int | None:
    """Index (1-based count of steps) at which `length` consecutive True first complete."""
    run = 0
    for i, v in enumerate(ok):
        run = run + 1 if v else 0
        if run >= length:
            return i + 1
    return None
