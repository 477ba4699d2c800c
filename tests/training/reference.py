"""An independent plain-numpy peephole LSTM, written from the equations of docs/MODEL.md.

Deliberately slow and literal: loops over steps, blocks and cells, one scalar equation at
a time, so that it shares no vectorisation tricks (or bugs) with training/model.py.

Weights are given per gate and per cell, each over the feeding vector
u(t) = [1, x(t), y(t-1) of all cells (block-major), gates(t-1) if gate_to_gate
(block-major: input, forget, output of block 0, then block 1, ...)]:
    w_in, w_fg, w_out [blocks, len(u)], w_c [blocks, S, len(u)],
    p_in, p_fg, p_out [blocks, S],
    w_o [outputs, len(v)] over v(t) = [1 if bias_to_output, x(t) if input_to_output, y(t),
    gates(t) if gate_to_output].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def logistic(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a)) if a >= 0 else math.exp(a) / (1.0 + math.exp(a))


def squash(name: str, a: float) -> float:
    if name == "tanh":
        return math.tanh(a)
    if name == "logistic2":
        return 2.0 * logistic(a) - 1.0
    if name == "logistic4":
        return 4.0 * logistic(a) - 2.0
    if name == "identity":
        return a
    raise ValueError(name)


def f_out(name: str, net: np.ndarray) -> np.ndarray:
    if name == "linear":
        return net.copy()
    if name == "logistic":
        return np.array([logistic(a) for a in net])
    if name == "softmax":
        e = np.exp(net - net.max())
        return e / e.sum()
    raise ValueError(name)


def run_sequence(
    arch: dict[str, Any],
    w: dict[str, np.ndarray],
    x: np.ndarray,
    s0: np.ndarray | None = None,
    y0: np.ndarray | None = None,
    gates0: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """One sequence x [T, I] -> outputs [T, K], per-step internals, final state."""
    nb, ns = arch["blocks"], arch["cells_per_block"]
    s = np.zeros((nb, ns)) if s0 is None else np.array(s0, float).reshape(nb, ns)
    y = np.zeros((nb, ns)) if y0 is None else np.array(y0, float).reshape(nb, ns)
    gates = np.zeros((nb, 3)) if gates0 is None else np.array(gates0, float).reshape(nb, 3)
    out, states, outs, gate_seq = [], [], [], []
    for x_t in np.asarray(x, float):
        u = [1.0, *x_t, *y.ravel()]
        if arch["gate_to_gate"]:
            u += list(gates.ravel())
        u = np.array(u)
        s_new, y_new, g_new = np.zeros_like(s), np.zeros_like(y), np.zeros_like(gates)
        for j in range(nb):
            net_in = float(w["w_in"][j] @ u)
            net_fg = float(w["w_fg"][j] @ u)
            for v in range(ns):
                if arch["peepholes"]:
                    net_in += w["p_in"][j, v] * s[j, v]
                    net_fg += w["p_fg"][j, v] * s[j, v]
            y_in = logistic(net_in)
            y_fg = logistic(net_fg) if arch["forget_gate"] else 1.0
            for v in range(ns):
                g = squash(arch["g"], float(w["w_c"][j, v] @ u))
                s_new[j, v] = y_fg * s[j, v] + y_in * g
            net_out = float(w["w_out"][j] @ u)
            if arch["peepholes"]:
                for v in range(ns):
                    net_out += w["p_out"][j, v] * s_new[j, v]
            y_out = logistic(net_out)
            for v in range(ns):
                y_new[j, v] = y_out * squash(arch["h"], s_new[j, v])
            g_new[j] = [y_in, y_fg, y_out]
        s, y, gates = s_new, y_new, g_new
        v_t = [1.0] if arch["bias_to_output"] else []
        if arch["input_to_output"]:
            v_t += list(x_t)
        v_t += list(y.ravel())
        if arch["gate_to_output"]:
            v_t += list(gates.ravel())
        out.append(f_out(arch["output_activation"], w["w_o"] @ np.array(v_t)))
        states.append(s.ravel().copy())
        outs.append(y.ravel().copy())
        gate_seq.append(gates.copy())
    return {
        "y": np.array(out),
        "cell_states": np.array(states),
        "cell_outputs": np.array(outs),
        "gates": np.array(gate_seq),
        "final": {"cell_states": s.ravel(), "cell_outputs": y.ravel(), "gates": gates},
    }
