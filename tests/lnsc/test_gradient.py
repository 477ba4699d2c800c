"""The online learning rule against autograd on the truncated graph, traces against their
definition, and the timing of the updates (docs/LNSC.md, "Online learning")."""

from __future__ import annotations

import numpy as np
import pytest

from tests.lnsc.reference import TruncatedReference, trace_update
from training.lnsc.kernel import REC_FIXED
from training.lnsc.nets import Nets
from training.lnsc.network import Dims, Knobs

STEPS = 40


def random_case(seed: int) -> tuple[Dims, Knobs, np.ndarray, np.ndarray]:
    """A random knob combination, weights and input sequence."""
    r = np.random.default_rng(seed)
    dims = Dims(
        inputs=int(r.integers(1, 4)),
        blocks=int(r.integers(1, 4)),
        cells_per_block=int(r.integers(1, 4)),
    )
    knobs = Knobs(
        traces=bool(r.integers(2)),
        trace_lambda=float(r.uniform(0, 1)),
        quirk=bool(r.integers(2)),
        learn_lstm=False,
    )
    theta = r.uniform(-1, 1, dims.params) * float(r.choice([0.1, 1.0, 3.0]))
    x = (
        r.choice([0.0, 1.0], size=(STEPS, dims.inputs))
        if r.integers(2)
        else r.uniform(-1, 1, (STEPS, dims.inputs))
    )
    return dims, knobs, theta, x


def nets_of(dims: Dims, knobs: Knobs, theta: np.ndarray) -> Nets:
    nets = Nets(dims, knobs, theta[None].copy(), np.zeros((1, dims.critic_inputs)))
    nets.reset()
    return nets


@pytest.mark.parametrize("seed", range(8))
def test_sensitivities_equal_autograd_on_the_truncated_graph(seed: int) -> None:
    dims, knobs, theta, x = random_case(seed)
    nets = nets_of(dims, knobs, theta)
    ref = TruncatedReference(dims, theta, knobs.traces, knobs.trace_lambda, knobs.quirk)
    worst = 0.0
    for t in range(STEPS):
        res = nets.step(x[None, t : t + 1], np.zeros((1, 1)), record=True)
        o, grad, s = ref.step(x[t])
        assert abs(res.rec[0, 0, 0] - o) < 1e-12
        np.testing.assert_allclose(nets.s[0], s, atol=1e-12)
        worst = max(worst, float(np.abs(nets.grad[0] - grad).max() / max(1.0, np.abs(grad).max())))
    assert worst < 1e-6, worst
    # the check has teeth: the gradient is not trivially small
    assert np.abs(nets.grad).max() > 1e-4


def test_step_one_with_zero_output_peepholes_equals_full_autograd() -> None:
    """From reset with p_out = 0, nothing is truncated at step 1: full autograd of o(1)."""
    import torch

    dims = Dims()
    r = np.random.default_rng(3)
    theta = r.uniform(-0.1, 0.1, dims.params)
    theta_t = torch.tensor(theta, requires_grad=True)
    idx = dims.split(np.arange(dims.params))
    for b in range(dims.blocks):
        theta[idx["p_out"][b]] = 0.0
    theta_t = torch.tensor(theta, requires_grad=True)
    x = np.array([1.0, 0.0])
    # plain PyTorch of the forward equations, no truncation anywhere
    u = torch.cat(
        [
            torch.ones(1, dtype=torch.float64),
            torch.tensor(x),
            torch.zeros(dims.cells, dtype=torch.float64),
        ]
    )
    ys = []
    for b in range(dims.blocks):
        p = {k: theta_t[torch.as_tensor(v[b])] for k, v in idx.items() if k != "w_o"}
        s0 = torch.zeros(dims.cells_per_block, dtype=torch.float64)
        y_in = torch.sigmoid(p["w_in"] @ u + p["p_in"] @ s0)
        y_f = torch.sigmoid(p["w_f"] @ u + p["p_f"] @ s0)
        s1 = y_f * s0 + y_in * (2 * torch.sigmoid(p["w_c"] @ u) - 1)
        y_out = torch.sigmoid(p["w_out"] @ u + p["p_out"] @ s1)
        ys.append(y_out * (2 * torch.sigmoid(s1) - 1))
    w_o = theta_t[torch.as_tensor(idx["w_o"])]
    o = torch.sigmoid(w_o[0] + w_o[1:] @ torch.cat(ys))
    (full,) = torch.autograd.grad(o, theta_t)
    for traces in (False, True):
        nets = nets_of(dims, Knobs(traces=traces, learn_lstm=False), theta)
        nets.step(x[None, None], np.zeros((1, 1)))
        np.testing.assert_allclose(nets.grad[0], full.numpy(), atol=1e-10)


def test_traces_follow_their_definition() -> None:
    dims = Dims(inputs=2, blocks=2, cells_per_block=2)
    r = np.random.default_rng(7)
    theta = r.uniform(-2, 2, dims.params)
    x = r.choice([0.0, 1.0], size=(60, 2))
    for quirk in (True, False):
        nets = nets_of(
            dims, Knobs(traces=True, trace_lambda=0.8, quirk=quirk, learn_lstm=False), theta
        )
        u_tr = np.zeros(dims.u)
        s_tr = np.zeros(dims.cells)
        resets = 0
        for t in range(60):
            u = np.concatenate([[1.0], x[t], nets.y[0]])
            rec = nets.step(x[None, t : t + 1], np.zeros((1, 1)), record=True).rec[0, 0]
            s = rec[REC_FIXED : REC_FIXED + dims.cells]
            u_tr = trace_update(u_tr, u, u_tr, 0.8)
            S = dims.cells_per_block
            ref = np.tile(u_tr[:S], dims.blocks) if quirk else s_tr
            resets += int(np.sum(s * ref < 0))
            s_tr = trace_update(s_tr, s, ref, 0.8)
            np.testing.assert_allclose(nets.u_trace[0], u_tr, atol=1e-14)
            np.testing.assert_allclose(nets.s_trace[0], s_tr, atol=1e-14)
        assert u_tr[0] == 1.0  # the bias trace saturates at 1
        if not quirk:
            assert resets > 0  # the sign resets were exercised


def test_traces_with_zero_lambda_equal_the_plain_rule() -> None:
    """ETLSTM with lambda_L = 0 is the plain rule while |s| <= 1 (sheet, section 6)."""
    dims = Dims()
    r = np.random.default_rng(11)
    theta = r.uniform(-0.5, 0.5, dims.params)
    x = r.choice([0.0, 1.0], size=(1, 200, 2))
    us = r.choice([0.0, 1.0], size=(1, 200), p=[0.9, 0.1])
    runs = []
    for traces in (False, True):
        nets = nets_of(dims, Knobs(traces=traces, trace_lambda=0.0), theta)
        runs.append(nets.block(x, us, record=True))
        runs[-1].theta = nets.theta.copy()
    assert np.abs(runs[0].rec[..., REC_FIXED : REC_FIXED + 4]).max() <= 1.0
    np.testing.assert_allclose(runs[1].theta, runs[0].theta, atol=1e-13)
    np.testing.assert_allclose(runs[1].rec, runs[0].rec, atol=1e-13)
    assert np.abs(runs[0].theta - theta).max() > 1e-3  # it did learn


def test_update_uses_the_stored_gradient_before_the_forward_pass() -> None:
    """theta(t) = theta(t-1) - alpha(t) (o(t-1) - US(t)) do(t-1)/dtheta; first update null."""
    dims = Dims()
    r = np.random.default_rng(5)
    theta = r.uniform(-0.1, 0.1, dims.params)
    x = r.choice([0.0, 1.0], size=(30, 2))
    us = x[:, 1]
    for modulate in (True, False):
        nets = nets_of(dims, Knobs(modulate=modulate), theta)
        nets.w_critic[:] = 0.1
        for t in range(30):
            before, g, o_prev = nets.theta.copy(), nets.grad.copy(), nets.o_prev.copy()
            s_prev, y_prev = nets.s.copy(), nets.y.copy()
            rec = nets.step(x[None, t : t + 1], us[None, t : t + 1], record=True).rec[0, 0]
            alpha = 0.5 * (1 + abs(rec[2])) if modulate else 0.5
            assert rec[4] == pytest.approx(alpha)
            expected = before - alpha * (o_prev - us[t]) * g
            np.testing.assert_allclose(nets.theta, expected, atol=1e-15)
            if t == 0:
                np.testing.assert_array_equal(nets.theta, before)
                assert rec[2] == 0.0
            # o(t) comes from the updated weights: a frozen copy of them, from the same
            # s(t-1) and y(t-1), gives the same output
            check = nets_of(dims, Knobs(learn_lstm=False), nets.theta[0])
            check.s[:], check.y[:] = s_prev, y_prev
            out = check.step(x[None, t : t + 1], np.zeros((1, 1)), record=True).rec[0, 0, 0]
            assert out == pytest.approx(rec[0], abs=1e-15)
        assert np.abs(nets.theta - theta).max() > 1e-4
