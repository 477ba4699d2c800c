"""training/tasks/mackey_glass.py: the integration against an independent one, the data."""

from __future__ import annotations

import numpy as np
import pytest

from training.tasks import get_task
from training.tasks import mackey_glass as mg


def _mg_loop(x0: float, t_end: float, dt: float) -> np.ndarray:
    """Plain step-by-step RK4, midpoint of the delayed value by linear interpolation."""
    d = round(17 / dt)
    xs = [x0] * (d + 1)

    def f(v: float) -> float:
        return 0.2 * v / (1 + v**10)

    for _ in range(round(t_end / dt)):
        i = len(xs) - 1
        x, a, b = xs[-1], xs[i - d], xs[i - d + 1]
        m = 0.5 * (a + b)
        k1 = -0.1 * x + f(a)
        k2 = -0.1 * (x + dt / 2 * k1) + f(m)
        k3 = -0.1 * (x + dt / 2 * k2) + f(m)
        k4 = -0.1 * (x + dt * k3) + f(b)
        xs.append(x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
    return np.array(xs[d:])


def test_mackey_glass_matches_independent_finer_integration():
    ours = mg.integrate(1.2, 200.0, dt=0.01)
    ref = _mg_loop(1.2, 200.0, dt=0.001)[::10]
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-6
    # Halving our own step changes nothing visible either.
    assert np.abs(mg.integrate(1.2, 200.0, dt=0.005)[::2] - ours).max() < 1e-8
    # The dynamics are not trivial (it would also agree if x stayed constant).
    assert ours.max() - ours.min() > 0.3


def test_mackey_glass_satisfies_the_delay_equation():
    dt, d = 0.01, 1700
    x = mg.integrate(0.7, 300.0, dt=dt)
    k = np.arange(d + 2, len(x) - 1)  # t > tau: the delayed term is the solution itself
    dxdt = (x[k + 1] - x[k - 1]) / (2 * dt)
    rhs = 0.2 * x[k - d] / (1 + x[k - d] ** 10) - 0.1 * x[k]
    assert np.abs(dxdt - rhs).max() < 1e-5
    # A wrong delay would not fit.
    wrong = 0.2 * x[k - d + 100] / (1 + x[k - d + 100] ** 10) - 0.1 * x[k]
    assert np.abs(dxdt - wrong).max() > 1e-3


def test_mackey_glass_sampling_and_task_data():
    s = mg.series(20, 1.2, sample_interval=6.0, transient=100.0)
    grid = mg.integrate(1.2, 100.0 + 19 * 6.0)
    np.testing.assert_array_equal(s, grid[10000::600])
    data = get_task("mackey-glass").generate(0, quick=True)
    assert data.data["tau"] == 17 and data.data["sample_interval"] == 6
    for split in (data.train, data.val, data.test):
        np.testing.assert_array_equal(split.y[:, :-1], split.x[:, 1:])  # target = next sample
    assert data.test.x.shape[0] == 1 and data.val.mask[0, :100].sum() == 0
    # Validation and test are fresh series, not pieces of the training one.
    assert not np.isin(data.test.x.ravel(), data.train.x.ravel()).any()
    norm = data.normalization
    raw_train = data.extra["raw"]["train"]
    assert norm["input_mean"] == pytest.approx([raw_train.mean()])
    assert norm["input_std"] == pytest.approx([raw_train.std()])
