"""training/baselines.py: the baselines against series whose answer is known."""

from __future__ import annotations

import numpy as np

from training.baselines import linear_ar


def test_linear_ar_baseline_recovers_an_exact_recurrence():
    t = np.arange(3000)
    s = np.sin(0.3 * t) + 0.5 * np.sin(0.05 * t)  # exactly AR(4) (two sinusoids)
    out = linear_ar(s[:1000], s[1000:2000], s[2000:], warmup=20, max_window=20)
    assert out["test_nmse"] < 1e-12
    assert out["window"] >= 4
    assert out["val_nmse_by_window"]["1"] > 1e-3  # a window of 1 cannot do it
