"""Many lnsc networks with their critics, advanced together block by block.

`Nets` holds every array of docs/LNSC.md with a leading network axis: the weights (which
persist), and the activations, sensitivities, traces and critic state (zeroed by `reset`
at every block start).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from training.lnsc.kernel import record_width, run_block
from training.lnsc.network import Dims, Knobs, init_theta, network_rng


@dataclass
class BlockResult:
    """What one block left: criterion per network, and the per-step record if asked."""

    met: np.ndarray  # [N] block step where the first criterion run began, -1 if none
    rec: np.ndarray | None  # [N, T, R] (see kernel.REC_*), or None


@dataclass
class Nets:
    dims: Dims
    knobs: Knobs
    theta: np.ndarray  # [N, P]
    w_critic: np.ndarray  # [N, K]
    ids: list[tuple[int, str, int]] = field(default_factory=list)  # (seed, program, index)

    @classmethod
    def fresh(
        cls,
        seed: int,
        program: str,
        indices: list[int],
        knobs: Knobs | None = None,
        dims: Dims | None = None,
    ) -> Nets:
        """Naive networks (weights U[-0.1, 0.1], critic weights 0.1); see `network_rng`."""
        dims = dims or Dims()
        knobs = knobs or Knobs()
        theta = init_theta(dims, [network_rng(seed, program, i, "weights") for i in indices])
        w = np.full((len(indices), dims.critic_inputs), knobs.critic_init)
        nets = cls(dims, knobs, theta, w, [(seed, program, i) for i in indices])
        nets.reset()
        return nets

    @property
    def n(self) -> int:
        return self.theta.shape[0]

    def reset(self) -> None:
        """Block start: activations, sensitivities, traces, the stored output and gradient,
        and the critic's V(t-1), trace, previous input and first-step flag. Weights persist."""
        d, n = self.dims, self.n
        self.sens = np.zeros((n, d.blocks, d.cells_per_block, 3 * d.u + 2 * d.cells_per_block))
        self.grad = np.zeros((n, d.params))
        self.s = np.zeros((n, d.cells))
        self.y = np.zeros((n, d.cells))
        self.u_trace = np.zeros((n, d.u))
        self.s_trace = np.zeros((n, d.cells))
        self.o_prev = np.zeros(n)
        self.e_critic = np.zeros((n, d.critic_inputs))
        self.xc_prev = np.zeros((n, d.critic_inputs))
        self.v_prev = np.zeros(n)
        self.first = np.ones(n, np.int64)
        self.run_len = np.zeros(n, np.int64)
        self.met = np.full(n, -1, np.int64)

    def subset(self, rows: np.ndarray | list[int]) -> Nets:
        """A copy of some networks (weights and critic), freshly reset."""
        rows = np.asarray(rows, int)
        out = Nets(
            self.dims,
            self.knobs,
            self.theta[rows].copy(),
            self.w_critic[rows].copy(),
            [self.ids[i] for i in rows],
        )
        out.reset()
        return out

    def step(
        self,
        x: np.ndarray,
        target: np.ndarray,
        lengths: np.ndarray | None = None,
        record: bool = False,
    ) -> BlockResult:
        """Advance every network over its steps of x [N, T, I] (no reset: call `reset`)."""
        n, steps, _ = x.shape
        if lengths is None:
            lengths = np.full(n, steps, np.int64)
        d, k = self.dims, self.knobs
        rec = np.zeros((n, steps if record else 0, record_width(d.cells, d.blocks)))
        run_block(
            self.theta,
            self.sens,
            self.grad,
            self.s,
            self.y,
            self.u_trace,
            self.s_trace,
            self.o_prev,
            self.w_critic,
            self.e_critic,
            self.xc_prev,
            self.v_prev,
            self.first,
            self.run_len,
            self.met,
            np.ascontiguousarray(x, np.float64),
            np.ascontiguousarray(target, np.float64),
            np.asarray(lengths, np.int64),
            d.blocks,
            d.cells_per_block,
            k.alpha0,
            k.modulate,
            k.traces,
            k.trace_lambda,
            k.quirk,
            k.learn_lstm,
            k.learn_critic,
            k.gamma,
            k.critic_lambda,
            k.critic_rate,
            k.error_limit,
            k.criterion_steps,
            rec,
        )
        return BlockResult(self.met.copy(), rec if record else None)

    def block(
        self,
        x: np.ndarray,
        target: np.ndarray,
        lengths: np.ndarray | None = None,
        record: bool = False,
    ) -> BlockResult:
        """One block: reset, then every step of it."""
        self.reset()
        return self.step(x, target, lengths, record)
