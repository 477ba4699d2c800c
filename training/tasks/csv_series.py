"""Your own time series from a CSV file (header row, one row per time step, in time order).

    python -m training train csv --csv data.csv --features a,b --targets c \
        [--horizon 1] [--window 100] [--val-fraction 0.2] --out models --name my-model

The input at step t is the feature columns at row t; the target is the target columns at row
t + horizon. Split by time: the first (1 - val_fraction) of the rows are training rows, the
rest validation rows; a training target never lies in the validation rows. Mean and standard
deviation of features and targets come from the training rows only; the network trains on
standardised values and the statistics go into the graph (export `normalization`), so the
served model takes and returns raw units.

Training uses windows of `window` steps (half-overlapping). Validation runs the network over
the whole series from the first row (so its state has seen the past) and scores only the
validation rows. There is no separate test part: the test metrics are the validation ones.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from .base import Split, Task, TaskData, TrainDefaults, masked_mse


def read_columns(path: str | Path, columns: list[str]) -> np.ndarray:
    """The named columns as float64 [rows, len(columns)]; a clear error on bad data."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}; columns: {reader.fieldnames}")
        rows = []
        for i, row in enumerate(reader, start=2):
            try:
                rows.append([float(row[c]) for c in columns])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path} line {i}: not a number in {columns}: {e}") from e
    a = np.asarray(rows, dtype=np.float64).reshape(-1, len(columns))
    if not np.isfinite(a).all():
        raise ValueError(f"{path}: NaN or infinite values")
    return a


def _split_list(s: str) -> list[str]:
    return [c.strip() for c in s.split(",") if c.strip()]


class CsvSeries(Task):
    name = "csv"
    description = ("your own series from a CSV file: --csv PATH --features a,b --targets c "
                   "[--horizon 1] [--window N]; split by time, normalisation in the graph")
    loss = "mse"
    architecture = {
        "blocks": 8, "cells_per_block": 1, "g": "tanh", "h": "tanh",
        "output_activation": "linear", "input_to_output": True, "forget_bias": 1.0,
    }
    defaults = TrainDefaults(epochs=100, batch_size=32, lr=5e-3, clip=1.0, patience=15,
                             schedule="plateau", quick_epochs=1)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("csv task")
        g.add_argument("--csv", dest="csv_path", help="CSV file with a header row")
        g.add_argument("--features", help="comma-separated input columns")
        g.add_argument("--targets", help="comma-separated target columns")
        g.add_argument("--horizon", type=int, default=1, help="predict this many rows ahead")
        g.add_argument("--window", type=int, default=100, help="training window (steps)")
        g.add_argument("--val-fraction", type=float, default=0.2,
                       help="last fraction of the rows used for validation")

    def generate(self, seed: int, quick: bool = False, **options: Any) -> TaskData:
        path = options.get("csv_path")
        if not path or not options.get("features") or not options.get("targets"):
            raise ValueError("the csv task needs --csv PATH --features a,b --targets c")
        features, targets = _split_list(options["features"]), _split_list(options["targets"])
        horizon = int(options.get("horizon", 1))
        window = int(options.get("window", 100))
        val_fraction = float(options.get("val_fraction", 0.2))
        if horizon < 0 or window < 1 or not 0.0 < val_fraction < 1.0:
            raise ValueError("need horizon >= 0, window >= 1, 0 < val-fraction < 1")
        feat = read_columns(path, features)
        targ = read_columns(path, targets)
        rows = len(feat)
        n_train = int(math.floor((1.0 - val_fraction) * rows))
        if n_train - horizon < 2 or rows - n_train < 1:
            raise ValueError(f"{path}: too few rows ({rows}) for this split and horizon")

        # Statistics from the training rows only; a constant column keeps std 1.
        def stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            mu, sd = a[:n_train].mean(axis=0), a[:n_train].std(axis=0)
            return mu, np.where(sd > 0, sd, 1.0)

        fm, fs = stats(feat)
        tm, ts = stats(targ)
        xs, ys = (feat - fm) / fs, (targ - tm) / ts
        steps = rows - horizon  # input rows that have a target
        x_all, y_all = xs[:steps], ys[horizon : horizon + steps]

        # Training: windows inside rows [0, n_train - horizon) (targets in training rows).
        n_fit = n_train - horizon
        w = min(window, n_fit)
        starts = list(range(0, n_fit - w + 1, max(1, w // 2)))
        if starts[-1] != n_fit - w:
            starts.append(n_fit - w)
        train = Split(np.stack([x_all[s : s + w] for s in starts]),
                      np.stack([y_all[s : s + w] for s in starts]), np.ones((len(starts), w)))
        # Validation: the whole series, scored on steps whose target is a validation row.
        mask = np.zeros((1, steps))
        mask[0, max(0, n_train - horizon) :] = 1.0
        val = Split(x_all[None], y_all[None], mask)
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return TaskData(
            train=train, val=val, test=val,
            data={"generator": "csv", "path": str(path), "sha256": digest, "rows": rows,
                  "features": features, "targets": targets, "horizon": horizon,
                  "window": w, "val_fraction": val_fraction, "train_rows": n_train},
            input_names=features,
            output_names=[f"{c}+{horizon}" if horizon else c for c in targets],
            normalization={"input_mean": fm.tolist(), "input_std": fs.tolist(),
                           "target_mean": tm.tolist(), "target_std": ts.tolist()},
        )

    def evaluate(self, pred: np.ndarray, split: Split, data: TaskData) -> dict[str, Any]:
        m = split.mask.astype(bool)
        p, y = pred[m], split.y[m]
        var = np.var(y, axis=0)
        ts = np.asarray(data.normalization["target_std"]) if data.normalization else 1.0
        return {"mse": masked_mse(pred, split.y, split.mask),
                "nmse": float(np.mean(np.mean((p - y) ** 2, axis=0) / np.where(var > 0, var, 1))),
                "rmse_raw": (np.sqrt(np.mean((p - y) ** 2, axis=0)) * ts).tolist()}

    def solved(self, metrics: dict[str, Any]) -> bool:
        return metrics.get("nmse", math.inf) < 1.0  # better than predicting the mean
