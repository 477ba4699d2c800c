"""One fused loop that advances N networks through a block of steps (numba).

Per step t and network, in the order of docs/LNSC.md:
1. critic: xc(t) = [CS(t), clip01(o(t-1)), clip01(s(t-1))], V(t) = w . xc(t),
   delta(t) = US(t) + gamma V(t) - V(t-1) (0 on a block's first step), trace and update;
2. criterion on err(t) = o(t-1) - US(t);
3. LSTM update theta -= alpha(t) err(t) do(t-1)/dtheta with the sensitivities stored at
   t-1, alpha(t) = alpha0 (1 + |delta(t)|);
4. forward pass on x(t) with the new weights, the truncated forward-propagated
   sensitivities (Gers et al. 2002), optionally on eligibility traces, and do(t)/dtheta.

The per-network work is a few hundred flops, so numpy's per-call overhead would dominate:
here each network runs as plain scalar loops, networks in parallel (prange). Every network's
arithmetic is independent of the others', so a network gives the same numbers alone or
among many. Without numba the same code runs as (slow) Python.
"""

from __future__ import annotations

import math
import os

import numpy as np

try:  # numba is in the train extra; the pure-Python fallback is for tiny checks only
    from numba import njit, prange

    HAVE_NUMBA = os.environ.get("PEEPHOLE_NO_NUMBA", "") != "1"
except ImportError:  # pragma: no cover - exercised only without numba
    HAVE_NUMBA = False

if not HAVE_NUMBA:
    prange = range

    def njit(*args, **kwargs):
        if args and callable(args[0]):
            return args[0]
        return lambda f: f


CUTOFF = 25.0  # every sigmoid-type derivative is 0 beyond |net| > CUTOFF (lnsc)
# Channels of the per-step record, then s [cells], y [cells], gates [blocks, 3].
REC_O, REC_V, REC_DELTA, REC_ERR, REC_ALPHA = 0, 1, 2, 3, 4
REC_FIXED = 5


def record_width(cells: int, blocks: int) -> int:
    return REC_FIXED + 2 * cells + 3 * blocks


@njit(cache=True, inline="always")
def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@njit(cache=True, inline="always")
def _dsig(net: float, y: float) -> float:
    """sigma'(net) from y = sigma(net), cut to 0 beyond the cutoff."""
    return 0.0 if abs(net) > CUTOFF else y * (1.0 - y)


@njit(cache=True, inline="always")
def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else (hi if x > hi else x)


@njit(cache=True, parallel=HAVE_NUMBA)
def run_block(
    theta,  # [N, P] weights (updated)
    sens,  # [N, B, S, 3U + 2S] sensitivities: c [U], in [U], p_in [S], f [U], p_f [S]
    grad,  # [N, P] do(t-1)/dtheta
    s,  # [N, C] cell states s(t-1)
    y,  # [N, C] cell outputs y(t-1)
    u_tr,  # [N, U] input traces
    s_tr,  # [N, C] cell-state traces
    o_prev,  # [N] o(t-1)
    w_c,  # [N, K] critic weights, K = 2 + C
    e_c,  # [N, K] critic traces
    xc_prev,  # [N, K] critic input of the previous step
    v_prev,  # [N] V(t-1)
    first,  # [N] 1 on a block's first step
    run,  # [N] current run of steps within the error limit
    met,  # [N] block step where the first run of `criterion_steps` began (-1: none)
    x,  # [N, T, I] inputs (x[..., 0] is the CS the critic sees)
    target,  # [N, T] US(t): the target of o(t-1) and the critic's reward
    lengths,  # [N] steps of each network's block (<= T)
    blocks: int,
    cells_per_block: int,
    alpha0: float,
    modulate: bool,
    traces: bool,
    lam: float,
    quirk: bool,
    learn_lstm: bool,
    learn_critic: bool,
    gamma: float,
    lam_c: float,
    eta: float,
    error_limit: float,
    criterion_steps: int,
    rec,  # [N, T, R] per-step record, or [N, 0, R] for none
) -> None:
    n_nets, _, n_in = x.shape
    B, S = blocks, cells_per_block
    C = B * S
    U = 1 + n_in + C
    L = 3 * U + 3 * S + S * U  # one block's parameters
    P_IN, W_F, P_F = U, U + S, 2 * U + S
    W_OUT, P_OUT, W_C = 2 * U + 2 * S, 3 * U + 2 * S, 3 * U + 3 * S
    D_IN, D_PIN, D_F, D_PF = U, 2 * U, 2 * U + S, 3 * U + S
    OUT = B * L
    K = 2 + C
    recording = rec.shape[1] > 0
    for n in prange(n_nets):
        u = np.empty(U)
        uu = np.empty(U)  # what the sensitivities see: u, or its trace
        s_new = np.empty(C)
        st_new = np.empty(C)
        y_new = np.empty(C)
        xc = np.empty(K)
        gv = np.empty(S)
        dg = np.empty(S)
        y_out = np.empty(B)
        d_out = np.empty(B)
        gates = np.empty((B, 3))
        for t in range(lengths[n]):
            us = target[n, t]
            # 1. critic
            xc[0] = x[n, t, 0]
            xc[1] = _clip(o_prev[n], 0.0, 1.0)
            for k in range(C):
                xc[2 + k] = _clip(s[n, k], 0.0, 1.0)
            value = 0.0
            for k in range(K):
                value += w_c[n, k] * xc[k]
            delta = 0.0 if first[n] else us + gamma * value - v_prev[n]
            first[n] = 0
            for k in range(K):
                e_c[n, k] = _clip(lam_c * e_c[n, k] + xc_prev[n, k], -1.0, 1.0)
                if learn_critic:
                    w_c[n, k] += eta * delta * e_c[n, k]
                xc_prev[n, k] = xc[k]
            v_prev[n] = value
            # 2. criterion on the prediction made at t-1
            err = o_prev[n] - us
            if abs(err) <= error_limit:
                run[n] += 1
                if run[n] == criterion_steps and met[n] < 0:
                    met[n] = t - criterion_steps + 1
            else:
                run[n] = 0
            # 3. update with the sensitivities stored at t-1 (all zero after a reset)
            alpha = alpha0 * (1.0 + abs(delta)) if modulate else alpha0
            if learn_lstm:
                step = alpha * err
                for p in range(OUT + 1 + C):
                    theta[n, p] -= step * grad[n, p]
            # 4. forward pass on x(t)
            u[0] = 1.0
            for i in range(n_in):
                u[1 + i] = x[n, t, i]
            for k in range(C):
                u[1 + n_in + k] = y[n, k]
            for j in range(U):
                if traces:
                    if u[j] * u_tr[n, j] < 0.0:
                        u_tr[n, j] = _clip(u[j], -1.0, 1.0)
                    else:
                        u_tr[n, j] = _clip(lam * u_tr[n, j] + u[j], -1.0, 1.0)
                    uu[j] = u_tr[n, j]
                else:
                    uu[j] = u[j]
            for b in range(B):
                base = b * L
                net_in = 0.0
                net_f = 0.0
                for j in range(U):
                    net_in += theta[n, base + j] * u[j]
                    net_f += theta[n, base + W_F + j] * u[j]
                for v in range(S):
                    net_in += theta[n, base + P_IN + v] * s[n, b * S + v]
                    net_f += theta[n, base + P_F + v] * s[n, b * S + v]
                y_in = _sig(net_in)
                y_f = _sig(net_f)
                d_in = _dsig(net_in, y_in)
                d_f = _dsig(net_f, y_f)
                for v in range(S):
                    net_c = 0.0
                    for j in range(U):
                        net_c += theta[n, base + W_C + v * U + j] * u[j]
                    sc = _sig(net_c)
                    gv[v] = 2.0 * sc - 1.0
                    dg[v] = 2.0 * _dsig(net_c, sc)
                    s_new[b * S + v] = y_f * s[n, b * S + v] + y_in * gv[v]
                for v in range(S):  # cell traces: after s(t), against the sign reference
                    c = b * S + v
                    if traces:
                        ref = u_tr[n, v] if quirk else s_tr[n, c]
                        if s_new[c] * ref < 0.0:
                            st_new[c] = _clip(s_new[c], -1.0, 1.0)
                        else:
                            st_new[c] = _clip(lam * s_tr[n, c] + s_new[c], -1.0, 1.0)
                    else:
                        st_new[c] = s_new[c]
                net_out = 0.0
                for j in range(U):
                    net_out += theta[n, base + W_OUT + j] * u[j]
                for v in range(S):
                    net_out += theta[n, base + P_OUT + v] * s_new[b * S + v]
                yo = _sig(net_out)
                y_out[b] = yo
                d_out[b] = _dsig(net_out, yo)
                gates[b, 0] = y_in
                gates[b, 1] = y_f
                gates[b, 2] = yo
                for v in range(S):
                    c = b * S + v
                    # peephole terms see the trace before this step's update, s~(t-1)
                    for j in range(U):
                        sens[n, b, v, j] = y_f * sens[n, b, v, j] + y_in * dg[v] * uu[j]
                        sens[n, b, v, D_IN + j] = (
                            y_f * sens[n, b, v, D_IN + j] + gv[v] * d_in * uu[j]
                        )
                        sens[n, b, v, D_F + j] = (
                            y_f * sens[n, b, v, D_F + j] + s[n, c] * d_f * uu[j]
                        )
                    for k in range(S):
                        sk = s_tr[n, b * S + k]
                        sens[n, b, v, D_PIN + k] = (
                            y_f * sens[n, b, v, D_PIN + k] + gv[v] * d_in * sk
                        )
                        sens[n, b, v, D_PF + k] = y_f * sens[n, b, v, D_PF + k] + s[n, c] * d_f * sk
                    y_new[c] = yo * (2.0 * _sig(s_new[c]) - 1.0)
            # output unit and do(t)/dtheta
            net_o = theta[n, OUT]
            for k in range(C):
                net_o += theta[n, OUT + 1 + k] * y_new[k]
            o = _sig(net_o)
            d_o = _dsig(net_o, o)
            grad[n, OUT] = d_o
            for k in range(C):
                grad[n, OUT + 1 + k] = d_o * y_new[k]
            for b in range(B):
                base = b * L
                for p in range(W_C):  # gate weights accumulate over the block's cells
                    grad[n, base + p] = 0.0
                for v in range(S):
                    c = b * S + v
                    hs = 2.0 * _sig(s_new[c]) - 1.0
                    dh = 2.0 * _dsig(s_new[c], 0.5 * (hs + 1.0))
                    w_y = d_o * theta[n, OUT + 1 + c]  # do/dy_c
                    a = w_y * y_out[b] * dh  # do/ds_c along y = y_out h(s)
                    for j in range(U):
                        grad[n, base + W_C + v * U + j] = a * sens[n, b, v, j]
                        grad[n, base + j] += a * sens[n, b, v, D_IN + j]
                        grad[n, base + W_F + j] += a * sens[n, b, v, D_F + j]
                    for k in range(S):
                        grad[n, base + P_IN + k] += a * sens[n, b, v, D_PIN + k]
                        grad[n, base + P_F + k] += a * sens[n, b, v, D_PF + k]
                    g_out = w_y * d_out[b] * hs  # do/dnet_out through this cell
                    for j in range(U):
                        grad[n, base + W_OUT + j] += g_out * uu[j]
                    for k in range(S):
                        grad[n, base + P_OUT + k] += g_out * st_new[b * S + k]
            o_prev[n] = o
            for k in range(C):
                s[n, k] = s_new[k]
                y[n, k] = y_new[k]
                s_tr[n, k] = st_new[k]
            if recording:
                rec[n, t, REC_O] = o
                rec[n, t, REC_V] = value
                rec[n, t, REC_DELTA] = delta
                rec[n, t, REC_ERR] = err
                rec[n, t, REC_ALPHA] = alpha
                for k in range(C):
                    rec[n, t, REC_FIXED + k] = s_new[k]
                    rec[n, t, REC_FIXED + C + k] = y_new[k]
                for b in range(B):
                    for g in range(3):
                        rec[n, t, REC_FIXED + 2 * C + 3 * b + g] = gates[b, g]
