"""Baselines the trained networks are compared with.

`linear_ar`: the time-window method of Gers, Eck & Schmidhuber (2001), in its linear form:
predict s[t+1] from the window s[t-p+1 .. t] (plus a constant) by least squares on the
training series; the window size p is chosen on the validation series; reported on the test
series on exactly the target steps the network is scored on (t >= warmup).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _design(s: np.ndarray, p: int, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [s[t-p+1], ..., s[t], 1] and targets s[t+1] for t = first .. len(s) - 2."""
    ts = np.arange(first, len(s) - 1)
    cols = [s[ts - lag] for lag in range(p - 1, -1, -1)]
    return np.stack([*cols, np.ones(len(ts))], axis=1), s[ts + 1]


def _nmse(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean((pred - target) ** 2) / np.var(target))


def linear_ar(
    train: np.ndarray, val: np.ndarray, test: np.ndarray, *, warmup: int, max_window: int
) -> dict[str, Any]:
    """Least-squares AR(p) for p = 1..max_window; p by validation NMSE; test NMSE at t >= warmup."""
    if max_window > warmup + 1:
        raise ValueError("the window must fit in the warm-up so both score the same steps")
    train, val, test = (np.asarray(a, dtype=np.float64) for a in (train, val, test))
    fits: dict[int, tuple[np.ndarray, float]] = {}
    for p in range(1, max_window + 1):
        a, b = _design(train, p, p - 1)
        w, *_ = np.linalg.lstsq(a, b, rcond=None)
        av, bv = _design(val, p, warmup)
        fits[p] = (w, _nmse(av @ w, bv))
    best = min(fits, key=lambda p: fits[p][1])
    w = fits[best][0]
    at, bt = _design(test, best, warmup)
    return {
        "window": best,
        "val_nmse": fits[best][1],
        "test_nmse": _nmse(at @ w, bt),
        "val_nmse_by_window": {str(p): v for p, (_, v) in fits.items()},
    }


def forecast_baselines(
    s: np.ndarray, n_train: int, horizon: int, score: np.ndarray, max_window: int
) -> dict[str, Any]:
    """The two forecasts a model of a series must beat, on the steps `score` (origins t;
    the target is s[t + horizon]):

    - naive: the last value, s[t];
    - linear AR(p): s[t + horizon] from [s[t-p+1], ..., s[t], 1] by least squares on the
      training rows (targets before `n_train`); p in 1..max_window chosen on the scored
      steps themselves, which favours the baseline.
    Returns predictions and MSEs (raw units).
    """
    s = np.asarray(s, dtype=np.float64)
    truth = s[score + horizon]
    naive = s[score]
    best: tuple[float, int, np.ndarray] | None = None
    for p in range(1, max_window + 1):
        ts = np.arange(p - 1, n_train - horizon)
        if len(ts) < p + 2 or score.min() < p - 1:
            break
        a = np.stack([*(s[ts - lag] for lag in range(p - 1, -1, -1)), np.ones(len(ts))], 1)
        w, *_ = np.linalg.lstsq(a, s[ts + horizon], rcond=None)
        av = np.stack([*(s[score - lag] for lag in range(p - 1, -1, -1)), np.ones(len(score))], 1)
        pred = av @ w
        mse = float(np.mean((pred - truth) ** 2))
        if best is None or mse < best[0]:
            best = (mse, p, pred)
    out: dict[str, Any] = {"naive_mse": float(np.mean((naive - truth) ** 2)), "naive": naive}
    if best is not None:
        out.update(ar_mse=best[0], ar_window=best[1], ar=best[2])
    return out
