"""Every task generator checked against its definition, independently of its own code."""

from __future__ import annotations

import re

import numpy as np
import pytest

from training.baselines import linear_ar
from training.tasks import TASKS, get_task
from training.tasks import mackey_glass as mg
from training.tasks.adding import adding_sequences
from training.tasks.embedded_reber import SYMBOLS, embedded_reber_string, encode
from training.tasks.msd import spike_train
from training.tasks.trace_conditioning import US_STEP, probe_step, stream


# ------------------------------------------------------------------ Mackey-Glass
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


def test_linear_ar_baseline_recovers_an_exact_recurrence():
    t = np.arange(3000)
    s = np.sin(0.3 * t) + 0.5 * np.sin(0.05 * t)  # exactly AR(4) (two sinusoids)
    out = linear_ar(s[:1000], s[1000:2000], s[2000:], warmup=20, max_window=20)
    assert out["test_nmse"] < 1e-12
    assert out["window"] >= 4
    assert out["val_nmse_by_window"]["1"] > 1e-3  # a window of 1 cannot do it


# ------------------------------------------------------------- trace conditioning
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


# ---------------------------------------------------------------- embedded Reber
# Written independently of the task module: the whole embedded grammar as one automaton.
EMBEDDED = {
    "s0": {"B": "s1"},
    "s1": {"T": "t0", "P": "p0"},
    "t0": {"B": "t1"}, "p0": {"B": "p1"},
}
for _br in "tp":
    EMBEDDED.update({
        f"{_br}1": {"T": f"{_br}2", "P": f"{_br}3"},
        f"{_br}2": {"S": f"{_br}2", "X": f"{_br}4"},
        f"{_br}3": {"T": f"{_br}3", "V": f"{_br}5"},
        f"{_br}4": {"X": f"{_br}3", "S": f"{_br}6"},
        f"{_br}5": {"P": f"{_br}4", "V": f"{_br}6"},
        f"{_br}6": {"E": f"{_br}7"},
        f"{_br}7": {_br.upper(): "last"},
    })
EMBEDDED["last"] = {"E": "accept"}
REBER_RE = r"B(TS*X(S|X(T*VPX)*T*V(V|PS))|P(T*VPX)*T*V(V|PS))E"
EMBEDDED_RE = re.compile(rf"B(T{REBER_RE}T|P{REBER_RE}P)E")


def test_embedded_reber_strings_and_targets():
    rng = np.random.default_rng(1)
    strings = [embedded_reber_string(rng) for _ in range(300)]
    assert {s[1] for s in strings} == {"T", "P"}
    split = encode(strings)
    for n, s in enumerate(strings):
        assert EMBEDDED_RE.fullmatch(s), s
        state = "s0"
        for t, c in enumerate(s):
            state = EMBEDDED[state][c]  # KeyError = not in the grammar
            if t < len(s) - 1:
                assert split.x[n, t].tolist() == [float(c == k) for k in SYMBOLS]
                legal = set(EMBEDDED[state])
                assert split.y[n, t].tolist() == [float(k in legal) for k in SYMBOLS]
                assert split.mask[n, t] == 1
        assert state == "accept"
        assert split.mask[n, len(s) - 1 :].sum() == 0
    # The long-range dependency: after the inner E only the branch symbol is legal.
    s = strings[0]
    inner_e = len(s) - 3
    assert split.y[0, inner_e].tolist() == [float(k == s[1]) for k in SYMBOLS]


# ----------------------------------------------------------------------- adding
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


# -------------------------------------------------------------------------- MSD
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


# ---------------------------------------------------------------------- csv
def test_csv_split_by_time_and_training_only_normalisation(tmp_path):
    t = np.arange(200, dtype=float)
    a, b, c = t, np.sin(t / 5) * 3 + 1, t**1.5 / 10  # trending: stats differ by part
    path = tmp_path / "series.csv"
    path.write_text("a,b,c\n" + "".join(f"{p},{q},{r}\n" for p, q, r in zip(a, b, c, strict=True)))
    task = get_task("csv")
    data = task.generate(0, csv_path=str(path), features="a,b", targets="c", horizon=2,
                         window=40, val_fraction=0.25)
    n_train = 150
    norm = data.normalization
    assert norm["input_mean"] == pytest.approx([a[:n_train].mean(), b[:n_train].mean()])
    assert norm["input_std"] == pytest.approx([a[:n_train].std(), b[:n_train].std()])
    assert norm["target_mean"] == pytest.approx([c[:n_train].mean()])
    assert norm["target_std"] == pytest.approx([c[:n_train].std()])
    assert norm["input_mean"][0] != pytest.approx(a.mean())
    # Training windows: inputs and targets only from training rows, target = row t + 2.
    raw_x = data.train.x * np.float32(norm["input_std"]) + np.float32(norm["input_mean"])
    raw_y = data.train.y[..., 0] * norm["target_std"][0] + norm["target_mean"][0]
    assert raw_x[..., 0].max() < n_train - 2 + 1e-3
    rows = np.rint(raw_x[..., 0]).astype(int)
    np.testing.assert_allclose(raw_y, c[rows + 2], rtol=1e-4)
    # Validation: the whole series, scored where the target row is a validation row.
    assert data.val.x.shape == (1, 198, 2)
    assert np.flatnonzero(data.val.mask[0]).tolist() == list(range(148, 198))
    assert data.data["features"] == ["a", "b"] and data.data["horizon"] == 2
    assert data.input_names == ["a", "b"]
    with pytest.raises(ValueError, match="no column"):
        task.generate(0, csv_path=str(path), features="a,zz", targets="c")


# --------------------------------------------------------------- determinism
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
