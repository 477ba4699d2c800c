"""training/tasks/__init__.py: every task's data is seeded."""

from __future__ import annotations

import numpy as np
import pytest

from training.tasks import TASKS, get_task


@pytest.mark.parametrize("name", [n for n in TASKS if n != "csv"])
def test_same_seed_same_data(name):
    task = get_task(name)
    one, two = task.generate(7, quick=True), task.generate(7, quick=True)
    for a, b in ((one.train, two.train), (one.val, two.val), (one.test, two.test)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
        np.testing.assert_array_equal(a.mask, b.mask)
    assert one.data == two.data
    if name != "mackey-glass":  # the series is fixed by x0; the others are random
        other = task.generate(8, quick=True)
        assert not np.array_equal(other.train.x, one.train.x)
