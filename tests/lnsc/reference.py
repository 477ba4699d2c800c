"""Independent references for the lnsc tests: PyTorch autograd on the truncated graph, and the
critic and traces written straight from their definitions (docs/LNSC.md), step by step.

The truncated graph: y(t-1) in the block input is a constant, the s(t-1) peephole inputs of
the input and forget gates are constants, the output gate's peephole sees s(t) as a
constant; the cell state's own loop s(t) = y_f s(t-1) + y_in g keeps its gradient. With
eligibility traces the weights' gradients see the traces in place of the inputs: written
here as w.u in value with w.u~ as gradient (`_lin`). Sigmoid-type derivatives are 0 beyond
|net| > 25.
"""

from __future__ import annotations

import numpy as np
import torch

from training.lnsc.network import Dims


def _sig(x: torch.Tensor) -> torch.Tensor:
    y = torch.sigmoid(x)
    return torch.where(x.abs() > 25, y.detach(), y)


def _lin(w: torch.Tensor, value: torch.Tensor, grad_as: torch.Tensor) -> torch.Tensor:
    """w . value, whose gradient with respect to w is grad_as (value and grad_as constant)."""
    wd = w.detach()
    return (wd * value).sum(-1) + (w * grad_as).sum(-1) - (wd * grad_as).sum(-1)


def trace_update(prev: np.ndarray, new: np.ndarray, ref: np.ndarray, lam: float) -> np.ndarray:
    """The bounded eligibility trace: reset to clip(new) where new and ref have opposite signs."""
    out = np.where(new * ref < 0, new, lam * prev + new)
    return np.clip(out, -1.0, 1.0)


class TruncatedReference:
    """One lnsc network in float64 torch, fixed weights, advanced step by step."""

    def __init__(self, dims: Dims, theta: np.ndarray, traces: bool, lam: float, quirk: bool):
        self.d, self.traces, self.lam, self.quirk = dims, traces, lam, quirk
        self.theta = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
        self.idx = {k: torch.as_tensor(v) for k, v in dims.split(np.arange(dims.params)).items()}
        d = dims
        self.s = torch.zeros(d.blocks, d.cells_per_block, dtype=torch.float64)
        self.y = torch.zeros(d.cells, dtype=torch.float64)
        self.u_tr = np.zeros(d.u)
        self.s_tr = np.zeros((d.blocks, d.cells_per_block))

    def part(self, name: str, b: int) -> torch.Tensor:
        return self.theta[self.idx[name][b]]

    def step(self, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Forward x(t); returns o(t), do(t)/dtheta and s(t)."""
        d = self.d
        u = torch.cat(
            [
                torch.ones(1, dtype=torch.float64),
                torch.as_tensor(x, dtype=torch.float64),
                self.y.detach(),
            ]
        )
        un = u.numpy()
        if self.traces:
            self.u_tr = trace_update(self.u_tr, un, self.u_tr, self.lam)
            ut = torch.as_tensor(self.u_tr)
        else:
            ut = u
        st_prev = torch.as_tensor(self.s_tr.copy())
        s_new, y_new, st_new = [], [], np.zeros_like(self.s_tr)
        for b in range(d.blocks):
            sp = self.s[b]
            peep_g = st_prev[b] if self.traces else sp.detach()
            y_in = _sig(
                _lin(self.part("w_in", b), u, ut) + _lin(self.part("p_in", b), sp.detach(), peep_g)
            )
            y_f = _sig(
                _lin(self.part("w_f", b), u, ut) + _lin(self.part("p_f", b), sp.detach(), peep_g)
            )
            g = 2 * _sig(_lin(self.part("w_c", b), u, ut)) - 1
            sb = y_f * sp + y_in * g
            sv = sb.detach().numpy()
            if self.traces:
                ref = self.u_tr[: d.cells_per_block] if self.quirk else self.s_tr[b]
                st_new[b] = trace_update(self.s_tr[b], sv, ref, self.lam)
            else:
                st_new[b] = sv
            stb = torch.as_tensor(st_new[b])
            y_out = _sig(
                _lin(self.part("w_out", b), u, ut) + _lin(self.part("p_out", b), sb.detach(), stb)
            )
            s_new.append(sb)
            y_new.append(y_out * (2 * _sig(sb) - 1))
        self.s = torch.stack(s_new)
        self.y = torch.cat(y_new)
        self.s_tr = st_new
        w_o = self.theta[self.idx["w_o"]]
        o = _sig(w_o[0] + (w_o[1:] * self.y).sum())
        (grad,) = torch.autograd.grad(o, self.theta, retain_graph=True)
        return float(o.detach()), grad.numpy(), self.s.detach().numpy().reshape(-1)


def critic_reference(
    cs: np.ndarray,
    us: np.ndarray,
    o: np.ndarray,
    s: np.ndarray,
    w0: np.ndarray,
    gamma: float,
    lam: float,
    eta: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """V(t), delta(t) and the final weights of the TD(lambda) critic on one block.

    o [T] and s [T, C] are the network's outputs and cell states per step (the critic at t
    reads their values at t-1, clipped to [0, 1]; zeros before the first step).
    """
    steps, cells = s.shape
    w = np.array(w0, float)  # [2 + cells] initial weights
    e = np.zeros_like(w)
    xc_prev = np.zeros_like(w)
    v_prev = 0.0
    values, deltas = np.zeros(steps), np.zeros(steps)
    for t in range(steps):
        o_p = o[t - 1] if t else 0.0
        s_p = s[t - 1] if t else np.zeros(cells)
        xc = np.concatenate([[cs[t]], np.clip([o_p], 0, 1), np.clip(s_p, 0, 1)])
        v = float(w @ xc)
        delta = 0.0 if t == 0 else us[t] + gamma * v - v_prev
        e = np.clip(lam * e + xc_prev, -1, 1)
        w = w + eta * delta * e
        values[t], deltas[t] = v, delta
        v_prev, xc_prev = v, xc
    return values, deltas, w
