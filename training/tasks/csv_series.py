"""Your own time series from a CSV file (header row, one row per time step).

    python -m training train csv --csv data.csv --features a,b [--targets c] [--time date] \
        [--missing error|drop|interpolate|ffill] [--horizon 1] --out models --name my-model

The input at step t is the feature columns at row t; the target is the target columns at
row t + horizon (default: the features themselves, one row ahead). Reading, gaps and the
time column: training/tasks/csv_table.py.

Split by time: the first (1 - val_fraction) of the rows train, the rest validate; no
training target lies in the validation rows. Validation runs the network over the whole
series from the first row (its state has seen the past) and scores the validation rows
only: they are the held-out end of the series, on which the model is compared with the
naive forecast (the last value) and a linear autoregression (training/baselines.py).
`solved` means it beat the naive forecast on every target. Training stops on the
validation loss (patience), within a time budget (`--max-minutes`).

What the network predicts (`--predict`): a network fed standardised levels cannot
extrapolate a trend: levels beyond the training range are new to it. So by default
(`auto`: whenever every target is also a feature and the horizon is at least 1) it
predicts the CHANGE of each target from its current value, standardised with the training
rows' changes; the graph adds the current value back (card `normalization.
target_offset_input`). `level` predicts the values themselves. Either way the statistics are
in the graph: the served model takes and returns raw units, step by step, so streaming in
chunks equals the whole sequence.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from training.baselines import forecast_baselines
from training.errors import UserError

from .base import Split, Task, TaskData, TrainDefaults, masked_mse
from .csv_table import POLICIES, read_table

MAX_AR_WINDOW = 60


def _split_list(s: str | None) -> list[str]:
    return [c.strip() for c in (s or "").split(",") if c.strip()]


class CsvSeries(Task):
    name = "csv"
    description = (
        "your own series from a CSV file: --csv PATH --features a,b [--targets c] "
        "[--time COL] [--missing POLICY] [--horizon N]; split by time, compared "
        "with the naive and a linear AR forecast"
    )
    loss = "mse"
    architecture = {
        "blocks": 8,
        "cells_per_block": 1,
        "g": "tanh",
        "h": "tanh",
        "output_activation": "linear",
        "input_to_output": True,
        "forget_bias": 1.0,
    }
    # Stops on the validation loss (patience) or the time budget; `epochs` is only a cap.
    defaults = TrainDefaults(
        epochs=1000,
        batch_size=16,
        lr=5e-3,
        clip=1.0,
        patience=40,
        schedule="plateau",
        quick_epochs=1,
        max_minutes=30.0,
    )
    options = (
        "csv_path",
        "features",
        "targets",
        "time",
        "sort_time",
        "missing",
        "horizon",
        "window",
        "val_fraction",
        "predict",
    )

    def add_arguments(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        parser.add_argument(
            "--csv",
            dest="csv_path",
            metavar="PATH",
            help="CSV file with a header row, one row per time step (required)",
        )
        parser.add_argument(
            "--features", metavar="A,B", help="comma-separated input columns (required)"
        )
        parser.add_argument(
            "--targets",
            metavar="C",
            help="comma-separated columns to predict (default: the features)",
        )
        parser.add_argument(
            "--time",
            metavar="COL",
            help="time column (numbers or ISO 8601 dates): rows must be in "
            "increasing time, without repeats (default: none, rows in "
            "file order)",
        )
        parser.add_argument(
            "--sort-time", action="store_true", help="sort the rows by the time column first"
        )
        parser.add_argument(
            "--missing",
            choices=POLICIES,
            default="error",
            help="empty or NA cells: refuse them (error), drop their rows, "
            "interpolate linearly, or carry the last value forward "
            "(ffill) (default: error)",
        )
        parser.add_argument(
            "--horizon",
            type=int,
            default=1,
            metavar="N",
            help="predict the targets this many rows ahead (default: 1)",
        )
        parser.add_argument(
            "--window",
            type=int,
            default=100,
            metavar="N",
            help="training window in rows (default: 100)",
        )
        parser.add_argument(
            "--val-fraction",
            type=float,
            default=0.2,
            metavar="F",
            help="the last fraction of the rows held out for validation (default: 0.2)",
        )
        parser.add_argument(
            "--predict",
            choices=("auto", "change", "level"),
            default="auto",
            help="what the network predicts: the change from the current "
            "value, or the level itself; auto: the change when every "
            "target is a feature (default: auto)",
        )

    def default_name(self, options: dict[str, Any]) -> str:
        """The file's name, made a valid model name (`sunspots.csv` -> `sunspots`)."""
        stem = re.sub(r"[^a-z0-9._-]+", "-", Path(options.get("csv_path") or "csv").stem.lower())
        stem = stem.strip("-._")[:64]
        return stem or self.name

    # ---------------------------------------------------------------- data
    def generate(self, seed: int, quick: bool = False, **options: Any) -> TaskData:
        o = _Options.parse(options)
        table = read_table(
            o.path,
            list(dict.fromkeys([*o.features, *o.targets])),
            time=o.time,
            missing=o.missing,
            sort=o.sort_time,
        )
        feat = np.stack([table.column(c) for c in o.features], axis=1)
        targ = np.stack([table.column(c) for c in o.targets], axis=1)
        rows, h = len(feat), o.horizon
        n_train = int(math.floor((1.0 - o.val_fraction) * rows))
        n_fit = n_train - h  # input rows whose target is a training row
        if n_fit < 10 or rows - n_train < 2:
            raise UserError(
                f"{o.path}: {rows} usable rows are too few for --val-fraction "
                f"{o.val_fraction:g} and --horizon {h} (need 10 training steps "
                "and 2 validation rows)"
            )
        change = o.predict == "change" or (
            o.predict == "auto" and h >= 1 and all(c in o.features for c in o.targets)
        )
        if o.predict == "change" and not (h >= 1 and all(c in o.features for c in o.targets)):
            raise UserError(
                "--predict change needs --horizon >= 1 and every target among "
                "the --features (its current value is the starting point)"
            )
        offset = [o.features.index(c) for c in o.targets] if change else None
        steps = rows - h  # input rows that have a target
        y_raw = targ[h : h + steps]
        goal = y_raw - feat[:steps, offset] if change else y_raw  # what the network predicts

        # Statistics from the training rows only; a constant column keeps std 1.
        fm, fs = _stats(feat[:n_train])
        tm, ts = _stats(goal[:n_fit])
        xs, ys = (feat[:steps] - fm) / fs, (goal - tm) / ts

        # Training: windows inside the training rows; the first steps of each window (but
        # the first window) only warm up the state, as validation runs from the first row.
        w = min(o.window, n_fit)
        stride = max(1, w // 10)
        starts = list(range(0, n_fit - w + 1, stride))
        if starts[-1] != n_fit - w:
            starts.append(n_fit - w)
        if quick:
            starts = starts[:8]
        mask = np.ones((len(starts), w))
        mask[1:, : w // 5] = 0.0
        train = Split(
            np.stack([xs[s : s + w] for s in starts]),
            np.stack([ys[s : s + w] for s in starts]),
            mask,
        )
        # Validation: the whole series, scored on steps whose target is a validation row.
        vmask = np.zeros((1, steps))
        vmask[0, n_fit:] = 1.0
        val = Split(xs[None], ys[None], vmask)

        score = np.arange(n_fit, steps)
        base = [
            forecast_baselines(
                targ[:, k], n_train, h, score, min(MAX_AR_WINDOW, max(1, n_fit // 5))
            )
            for k in range(len(o.targets))
        ]
        data = {
            "generator": "csv",
            "path": str(o.path),
            "file": Path(o.path).name,
            "sha256": hashlib.sha256(Path(o.path).read_bytes()).hexdigest(),
            "rows_read": table.rows_read,
            "rows": rows,
            "train_rows": n_train,
            "validation_rows": rows - n_train,
            "features": o.features,
            "targets": o.targets,
            "horizon": h,
            "predict": "change" if change else "level",
            "time": o.time,
            **table.report,
            "window": w,
            "stride": stride,
            "val_fraction": o.val_fraction,
            "first_line": int(table.lines[0]),
            "last_line": int(table.lines[-1]),
        }
        names = [f"{c}+{h}" if h else c for c in o.targets]
        meaning = f"{', '.join(o.targets)} {h} row(s) after the input row, raw units" + (
            " (the network predicts the change from the current value; the graph adds it back)"
            if change
            else ""
        )
        return TaskData(
            train=train,
            val=val,
            test=val,
            data=data,
            input_names=o.features,
            output_names=names,
            normalization={
                "input_mean": fm.tolist(),
                "input_std": fs.tolist(),
                "target_mean": tm.tolist(),
                "target_std": ts.tolist(),
                "target_offset_input": offset,
            },
            encoding={
                "inputs": {
                    "columns": o.features,
                    "meaning": f"one row of {Path(o.path).name} "
                    "per step, in time order, raw units; one continuous series: "
                    "carry the state from call to call",
                },
                "outputs": {"columns": names, "meaning": meaning},
                "warmup": f"the first {w // 5} steps of a series only build up the state",
            },
            extra={
                "targ": targ,
                "feat": feat,
                "offset": offset,
                "score": score,
                "h": h,
                "baselines": base,
                "tm": tm,
                "ts": ts,
            },
        )

    # ---------------------------------------------------------------- metrics
    def evaluate(self, pred: np.ndarray, split: Split, data: TaskData) -> dict[str, Any]:
        e = data.extra
        m = split.mask.astype(bool)
        out: dict[str, Any] = {"mse": masked_mse(pred, split.y, split.mask)}
        if len(split) != 1 or m.shape[1] != len(e["feat"]) - e["h"]:
            return out  # not the whole series: no raw-unit comparison
        raw = pred[0] * e["ts"] + e["tm"]
        if e["offset"] is not None:
            raw = raw + e["feat"][: len(raw), e["offset"]]
        score = e["score"]
        truth = e["targ"][score + e["h"]]
        model_mse = np.mean((raw[score] - truth) ** 2, axis=0)
        naive = np.array([b["naive_mse"] for b in e["baselines"]])
        ar = np.array([b.get("ar_mse", math.nan) for b in e["baselines"]])
        var = np.var(truth, axis=0)
        out.update(
            {
                "mse_raw": model_mse.tolist(),
                "rmse_raw": np.sqrt(model_mse).tolist(),
                "nmse": float(np.mean(model_mse / np.where(var > 0, var, 1.0))),
                "naive_mse_raw": naive.tolist(),
                "ar_mse_raw": ar.tolist(),
                "ar_window": [b.get("ar_window") for b in e["baselines"]],
                "mse_over_naive": (model_mse / naive).tolist(),
                "mse_over_ar": (model_mse / ar).tolist(),
                "worst_mse_over_naive": float(np.max(model_mse / naive)),
            }
        )
        return out

    def solved(self, metrics: dict[str, Any]) -> bool:
        return metrics.get("worst_mse_over_naive", math.inf) < 1.0

    def describe(self, data: TaskData, final: dict[str, Any]) -> str:
        d, test = data.data, final["test"]
        what = "the change from the last value" if d["predict"] == "change" else "the level"
        ratios = "; ".join(
            f"{t}: MSE {n:.3g}x the naive last-value forecast, {a:.3g}x a linear AR({p})"
            for t, n, a, p in zip(
                d["targets"],
                test["mse_over_naive"],
                test["mse_over_ar"],
                test["ar_window"],
                strict=True,
            )
        )
        return (
            f"{d['file']}: {', '.join(d['features'])} -> {', '.join(d['targets'])}, "
            f"{d['horizon']} row(s) ahead (the network predicts {what}); on the last "
            f"{d['validation_rows']} rows (held out): {ratios}"
        )


def _stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = a.mean(axis=0), a.std(axis=0)
    return mu, np.where(sd > 0, sd, 1.0)


class _Options:
    """The csv options, checked (each mistake one UserError naming the flag)."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)

    @classmethod
    def parse(cls, options: dict[str, Any]) -> _Options:
        path = options.get("csv_path")
        if not path:
            raise UserError("the csv task needs --csv PATH (and --features A,B)")
        features = _split_list(options.get("features"))
        if not features:
            raise UserError("the csv task needs --features A,B: the input columns")
        targets = _split_list(options.get("targets")) or list(features)
        horizon = options.get("horizon", 1)
        window = options.get("window", 100)
        val = options.get("val_fraction", 0.2)
        if not isinstance(horizon, int) or horizon < 0:
            raise UserError(f"--horizon {horizon}: must be a whole number of rows, 0 or more")
        if not isinstance(window, int) or window < 2:
            raise UserError(f"--window {window}: must be at least 2 rows")
        if not 0.0 < val < 1.0:
            raise UserError(f"--val-fraction {val}: must be between 0 and 1")
        if len(set(features)) != len(features) or len(set(targets)) != len(targets):
            raise UserError("--features and --targets must not repeat a column")
        predict = options.get("predict", "auto")
        return cls(
            path=Path(path),
            features=features,
            targets=targets,
            horizon=horizon,
            window=window,
            val_fraction=float(val),
            time=options.get("time"),
            sort_time=bool(options.get("sort_time")),
            missing=options.get("missing", "error"),
            predict=predict,
        )
