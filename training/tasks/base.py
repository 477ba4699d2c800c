"""What every task provides: seeded data splits, card metadata, defaults, metric, criterion.

A task turns a seed into `TaskData` (float32 arrays `[N, T, I]` inputs, `[N, T, K]` targets
and a `[N, T]` mask of the steps that count in the loss and the metrics), and knows how to
judge predictions on a split. `training/train.py` is task-agnostic: everything specific
(loss, stateful streams, normalisation, criterion, the paper's set-up) is declared by the
task, in its own module.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

import numpy as np

from training.errors import UserError

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
            raise ValueError(
                f"inconsistent split shapes {self.x.shape} {self.y.shape} {self.mask.shape}"
            )

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
    # Wall-clock budget: stop after the epoch in which it runs out (None: no budget).
    max_minutes: float | None = None

    def check(self) -> TrainDefaults:
        """Refuse values that cannot train (a UserError naming the option)."""
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "clip": self.clip,
            "patience": self.patience,
            "chunk_len": self.chunk_len,
            "pos_weight": self.pos_weight,
        }
        if self.max_minutes is not None:
            positive["max_minutes"] = self.max_minutes
        bad = [k for k, v in positive.items() if not v > 0]
        if self.weight_decay < 0:
            bad.append("weight_decay")
        if bad:
            flags = ", ".join("--" + k.replace("_", "-") for k in bad)
            raise UserError(f"{flags}: must be positive (weight decay: not negative)")
        if self.schedule not in ("plateau", "cosine", "none"):
            raise UserError(f"--schedule {self.schedule}: choose plateau, cosine or none")
        return self

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


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
    # Task-specific options: the destinations of the flags `add_arguments` adds.
    options: ClassVar[tuple[str, ...]] = ()

    def add_arguments(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        """Task-specific CLI options (only `csv` has some)."""

    def default_name(self, options: dict[str, Any]) -> str:
        """The model's name when `--name` is not given."""
        return self.name

    def describe(self, data: TaskData, final: dict[str, Any]) -> str:
        """The card's description once trained (the csv task names its file and columns)."""
        return self.description

    def reproduction(self, quick: bool = False) -> Reproduction | None:
        """The paper's set-up against ours for `python -m training reproduce` (None: none)."""
        return None

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


# ---------------------------------------------------------------- reproduction
# The 1997 LSTM cell: no forget gate, no peepholes, g in [-2, 2], h in [-1, 1].
LSTM1997 = {
    "forget_gate": False,
    "peepholes": False,
    "g": "logistic4",
    "h": "logistic2",
    "output_activation": "logistic",
}


@dataclass
class Setup:
    """One way of training in `python -m training reproduce`: architecture and optimiser."""

    name: str
    arch: dict[str, Any]
    optimizer: str  # "sgd" (plain, online) or "adam"
    lr: float
    batch: int
    clip: float | None = None
    plateau: bool = False  # halve lr when the fresh-data loss stalls (reproduce.PLATEAU_CHECKS)
    cosine: int | None = None  # anneal lr to lr/1000 over this many units (cosine)
    chunk: int = 100  # stateful tasks: truncated-BPTT chunk (steps)
    pos_weight: float = 1.0
    lr_source: str = ""  # where the learning rate comes from (paper / assumed)
    # "sse": the papers' objective (losses.Objective); "mean": the task's loss averaged over
    # the counted steps, as in training/train.py.
    objective: str = "mean"
    note: str = ""


@dataclass
class Check:
    """The criterion on one fresh draw: ok, the headline metric, its loss."""

    ok: bool
    metric: float
    loss: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reproduction:
    """A task as `reproduce` sees it: the paper's set-up and ours, the criterion on fresh data."""

    name: str
    loss: str  # mse | bce
    unit: str  # what one training "sequence" is
    paper: Setup
    modern: Setup
    figure: str  # the paper's figure
    criterion: str
    metric_name: str
    eval_every: int  # training units between checks
    max_units: int  # default budget in units (the time budget also applies)
    # model, rng -> Check on a fresh draw
    check: Callable[[Any, np.random.Generator], Check]
    # rng, n -> n fresh training sequences (stateless tasks)
    sample: Callable[[np.random.Generator, int], Split] | None = None
    # rng, steps -> one fresh stream of that many steps (stateful tasks)
    stream: Callable[[np.random.Generator, int], Split] | None = None
    # the final score after training (default: `check` on another fresh draw)
    final_check: Callable[[Any, np.random.Generator], Check] | None = None

    @property
    def stateful(self) -> bool:
        return self.stream is not None
