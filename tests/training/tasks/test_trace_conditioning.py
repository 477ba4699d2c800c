"""training/tasks/trace_conditioning.py: trial timings and probes."""

from __future__ import annotations

import numpy as np

from training.tasks.trace_conditioning import US_STEP, probe_step, stream


def test_trace_conditioning_timing():
    x, y, onsets = stream(3000, np.random.default_rng(3))
    cs, us = x[:, 0], x[:, 1]
    assert list(np.flatnonzero(cs)) == onsets
    us_times = np.flatnonzero(us)
    assert len(onsets) > 80
    for i, t in enumerate(onsets[:-1]):
        assert us[t + US_STEP] == 1  # US 5 steps (1 s) after the CS
        assert us[t + 1 : t + US_STEP].sum() == 0
        gap = onsets[i + 1] - (t + US_STEP)  # ITI from the US to the next CS
        assert 20 <= gap <= 30
    assert set(us_times) <= {t + US_STEP for t in onsets}
    np.testing.assert_array_equal(y[:-1, 0], us[1:])  # target: the next step's US


def test_trace_conditioning_probes():
    assert (probe_step(500), probe_step(1500)) == (3, 8)
    for delay in (3, 8, None):
        x, _, onsets = stream(400, np.random.default_rng(0), us_steps=[5] * 10 + [delay])
        t = onsets[10]
        us = x[t : t + 13, 1]
        expected = np.zeros(13)
        if delay is not None:
            expected[delay] = 1
        np.testing.assert_array_equal(us, expected)
        assert x[onsets[11] + 5, 1] == 1  # normal trials again afterwards
