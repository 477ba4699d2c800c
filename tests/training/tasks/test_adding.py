"""training/tasks/adding.py: targets recomputed from the inputs."""

from __future__ import annotations

import numpy as np
import pytest

from training.tasks.adding import adding_sequences


def test_adding_targets_recomputed():
    split, lengths = adding_sequences(500, 100, np.random.default_rng(2))
    assert lengths.min() >= 100 and lengths.max() <= 110
    for n, length in enumerate(lengths):
        x = split.x[n]
        marked = np.flatnonzero(x[:, 1] == 1.0)
        assert len(marked) == 2
        assert 1 <= marked[0] <= 9 and marked[1] <= 49
        assert x[0, 1] == -1 and x[length - 1, 1] == -1
        assert np.all(np.abs(x[:length, 0]) <= 1) and np.all(x[length:] == 0)
        assert np.flatnonzero(split.mask[n]).tolist() == [length - 1]
        expected = 0.5 + (x[marked[0], 0] + x[marked[1], 0]) / 4
        assert split.y[n, length - 1, 0] == pytest.approx(expected, abs=1e-6)
