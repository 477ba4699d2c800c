"""The trace-conditioning generators and the critic, against the exact checks of the spec."""

from __future__ import annotations

import numpy as np
import pytest

from tests.lnsc.reference import critic_reference
from training.lnsc import protocol as P
from training.lnsc.kernel import REC_DELTA, REC_FIXED, REC_O, REC_V
from training.lnsc.nets import Nets
from training.lnsc.network import Knobs, network_rng


def rngs(n: int = 40) -> list[np.random.Generator]:
    return [network_rng(1, "initial", i, "env") for i in range(n)]


def itis(block: P.Block) -> np.ndarray:
    """Silent steps between the end of each trial and the next onset."""
    ends = np.array(
        [
            o + (P.MISS_TRIAL_STEPS if t == P.MISS else (1 if d < 0 else d + 1))
            for o, d, t in zip(block.onsets, block.delays, block.types, strict=True)
        ]
    )
    return block.onsets[1:] - ends[:-1]


def test_training_blocks() -> None:
    seen = set()
    for r in rngs():
        b = P.training_block(r)
        assert b.steps == 1201  # 1200 transitions
        assert b.onsets[0] in range(20, 30) and b.cs[: b.onsets[0]].sum() == 0
        us = np.nonzero(b.us)[0]
        cs = np.nonzero(b.cs)[0]
        np.testing.assert_array_equal(cs, b.onsets)
        np.testing.assert_array_equal(us, (cs + 5)[cs + 5 < b.steps])  # CS-US gap 5
        gaps = itis(b)
        assert set(gaps) <= set(range(20, 30))
        seen |= set(gaps)
        assert 36 <= len(b.onsets) <= 46
    assert seen == set(range(20, 30))


def test_probe_blocks_hold_five_probes_and_end_silent() -> None:
    delays = set()
    for r in rngs():
        b = P.probe_block(r)
        assert len(b.onsets) == 5
        assert set(b.delays) <= {2, 7}
        delays |= set(b.delays)
        np.testing.assert_array_equal(np.nonzero(b.us)[0], b.onsets + b.delays)
        assert set(itis(b)) <= set(range(20, 30))
        # the block ends at the onset of trial 6: one final silent step after its ITI
        last_end = b.onsets[-1] + b.delays[-1] + 1
        assert 20 <= b.steps - 1 - last_end <= 29
        assert b.cs[-1] == 0 and b.us[-1] == 0 and b.steps <= 601
    assert delays == {2, 7}


def test_control_and_omission_blocks() -> None:
    seen = set()
    for r in rngs():
        b = P.control_block(r)
        assert b.steps == 1201
        assert b.onsets[0] in range(20, 30)
        assert not (b.cs * b.us).any()
        gaps = b.onsets[1:] - b.onsets[:-1] - 1
        assert set(gaps) <= set(range(30, 36))
        seen |= set(gaps)
        assert set(b.types) == {P.CS_ONLY, P.US_ONLY}
        o = P.omission_block(r)
        assert len(o.onsets) == 5 and set(o.types) <= {P.NORMAL, P.MISS}
        assert o.us.sum() == (o.types == P.NORMAL).sum()
    assert seen == set(range(30, 35))
    assert P.control_iti(_Fixed(0.0)) == 35  # only for U = 0
    assert P.training_iti(_Fixed(0.0)) == 20 and P.training_iti(_Fixed(0.99999)) == 29


class _Fixed:
    def __init__(self, u: float) -> None:
        self.u = u

    def random(self) -> float:
        return self.u


def test_probe_delays_after_truncation() -> None:
    assert P.steps_of(500) == 2 and P.steps_of(1500) == 7 and P.steps_of(1000) == 5
    assert P.PROBE_DELAYS == (2, 7) and P.TRAIN_DELAY == 5


def test_phase_and_trial_index() -> None:
    b = P.training_block(rngs(1)[0])
    phase, trial = b.phase(), b.trial_index()
    assert (phase[: b.onsets[0]] == -1).all() and (trial[: b.onsets[0]] == -1).all()
    assert (phase[b.onsets] == 0).all()
    assert (phase[np.nonzero(b.us)[0]] == 5).all()


@pytest.mark.parametrize("kind", ["train", "probe", "control"])
def test_critic_matches_its_definition_and_first_step_is_null(kind: str) -> None:
    env = rngs(3)
    nets = Nets.fresh(4, "initial", [0, 1, 2], Knobs())
    # a few blocks in, so that the critic weights have moved from 0.1
    for _ in range(2):
        x, us, n = P.stack([P.MAKERS["train"](r) for r in env])
        nets.block(x, us, n)
    w_before = nets.w_critic.copy()
    theta_before = nets.theta.copy()
    blocks = [P.MAKERS[kind](r) for r in env]
    x, us, n = P.stack(blocks)
    nets.reset()
    res = nets.step(x[:, :1], us[:, :1], record=True)  # the block's first step alone
    assert (res.rec[:, 0, REC_DELTA] == 0).all()
    np.testing.assert_array_equal(nets.theta, theta_before)  # null LSTM update
    np.testing.assert_array_equal(nets.w_critic, w_before)
    # the rest of the block, then the critic recomputed from its definition
    nets.w_critic[:] = w_before
    nets.reset()
    rec = nets.step(x, us, n, record=True).rec
    for i, b in enumerate(blocks):
        T = b.steps
        o = rec[i, :T, REC_O]
        s = rec[i, :T, REC_FIXED : REC_FIXED + 4]
        # the reference starts from the block's initial critic weights
        k = nets.knobs
        v, d, w = critic_reference(
            b.cs, b.us, o, s, w_before[i], k.gamma, k.critic_lambda, k.critic_rate
        )
        np.testing.assert_allclose(rec[i, :T, REC_V], v, atol=1e-12)
        np.testing.assert_allclose(rec[i, :T, REC_DELTA], d, atol=1e-12)
        np.testing.assert_allclose(nets.w_critic[i], w, atol=1e-12)
    assert np.abs(rec[..., REC_DELTA]).max() > 0.1
