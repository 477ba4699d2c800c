"""training/tasks/msd.py: intervals and targets of the spike trains."""

from __future__ import annotations

import numpy as np

from training.tasks.msd import spike_train


def test_msd_intervals_and_targets():
    x, y, mask, times = spike_train(5000, np.random.default_rng(4))
    spikes = np.flatnonzero(x[:, 0])
    np.testing.assert_array_equal(spikes, times)
    gaps = np.diff(spikes)
    assert set(gaps.tolist()) == {10, 11}  # F + I(n), both values occur
    assert 0 <= spikes[0] < 10
    np.testing.assert_array_equal(np.flatnonzero(mask), spikes[1:])
    np.testing.assert_array_equal(y[spikes[1:], 0], gaps - 10)
    assert y[mask == 0].sum() == 0
