"""training/tasks/trace_conditioning.py: trial timings and probes (lnsc's timings)."""

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
        gap = onsets[i + 1] - (t + US_STEP) - 1  # silent steps from the US to the next CS
        assert 20 <= gap <= 29
    assert 20 <= onsets[0] <= 29 and cs[: onsets[0]].sum() == 0  # the stream starts with an ITI
    assert set(us_times) <= {t + US_STEP for t in onsets}
    np.testing.assert_array_equal(y[:-1, 0], us[1:])  # target: the next step's US


def test_trace_conditioning_probes():
    assert (probe_step(500), probe_step(1500)) == (2, 7)  # lnsc truncates to whole steps
    for delay in (2, 7, None):
        x, _, onsets = stream(400, np.random.default_rng(0), us_steps=[5] * 10 + [delay])
        t = onsets[10]
        us = x[t : t + 13, 1]
        expected = np.zeros(13)
        if delay is not None:
            expected[delay] = 1
        np.testing.assert_array_equal(us, expected)
        assert x[onsets[11] + 5, 1] == 1  # normal trials again afterwards
        length = 8 if delay is None else delay + 1  # the ITI follows the trial's last step
        assert 20 <= onsets[11] - t - length <= 29


def test_trace_conditioning_training_streams_carry_probes():
    """As lnsc's probe test blocks (learning on): about 1.3% of training trials are probes."""
    x, _, onsets = stream(200_000, np.random.default_rng(4), probe_rate=5 / 395)
    delays = []
    for t in onsets:
        us = np.flatnonzero(x[t : t + 8, 1])
        delays.append(int(us[0]) if len(us) else None)
    counts = {d: delays.count(d) for d in (2, 5, 7)}
    assert counts[2] + counts[5] + counts[7] >= len(onsets) - 1
    rate = (counts[2] + counts[7]) / len(onsets)
    assert 0.008 < rate < 0.02 and counts[2] > 10 and counts[7] > 10
