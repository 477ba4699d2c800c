"""Sizes, parameter layout and knobs of an lnsc network with its TD critic.

All weights of one network live in one flat vector theta (87 values for the lnsc network:
2 inputs, 2 blocks x 2 cells, one logistic output). For block b (U = 1 + inputs + cells,
S = cells per block) the block's slice holds, in this order:

    w_in [U], p_in [S], w_f [U], p_f [S], w_out [U], p_out [S], w_c [S, U]

(input gate weights on u, input gate peepholes, forget gate weights and peepholes, output
gate weights and peepholes, then the rows of the cells' input weights), and after the last
block the output unit's weights on z = [1, y]. u = [1, x(t), y(t-1)] is the block input.
Many networks are stored as theta [N, P]: every array the kernel touches has a leading
network axis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Offsets inside a block's slice, as multiples of (U, S) (see the module docstring).
PART_NAMES = ("w_in", "p_in", "w_f", "p_f", "w_out", "p_out", "w_c")


@dataclass(frozen=True)
class Dims:
    """Network sizes. The lnsc network is the default: 2 inputs, 2 blocks x 2 cells."""

    inputs: int = 2
    blocks: int = 2
    cells_per_block: int = 2

    @property
    def cells(self) -> int:
        return self.blocks * self.cells_per_block

    @property
    def u(self) -> int:
        """Block input width: bias, inputs, previous cell outputs."""
        return 1 + self.inputs + self.cells

    @property
    def block_params(self) -> int:
        u, s = self.u, self.cells_per_block
        return 3 * u + 3 * s + s * u

    @property
    def output_offset(self) -> int:
        return self.blocks * self.block_params

    @property
    def params(self) -> int:
        return self.output_offset + 1 + self.cells

    @property
    def critic_inputs(self) -> int:
        """CS, the clipped output o(t-1) and the clipped cell states s(t-1)."""
        return 2 + self.cells

    def offsets(self) -> dict[str, int]:
        """Offset of each part inside a block's slice."""
        u, s = self.u, self.cells_per_block
        sizes = (u, s, u, s, u, s, s * u)
        out, at = {}, 0
        for name, size in zip(PART_NAMES, sizes, strict=True):
            out[name] = at
            at += size
        return out

    def split(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Views of theta [..., P] by part: w_in [..., B, U], w_c [..., B, S, U], w_o [..., 1+C]."""
        lead = theta.shape[:-1]
        u, s, b = self.u, self.cells_per_block, self.blocks
        blocks = theta[..., : self.output_offset].reshape(*lead, b, self.block_params)
        off = self.offsets()
        parts = {}
        for name in PART_NAMES:
            width = {"w_c": s * u}.get(name, u if name.startswith("w_") else s)
            view = blocks[..., off[name] : off[name] + width]
            parts[name] = view.reshape(*lead, b, s, u) if name == "w_c" else view
        parts["w_o"] = theta[..., self.output_offset :]
        return parts


@dataclass(frozen=True)
class Knobs:
    """Learning settings; the defaults are lnsc's (Rivest, Kalaska & Bengio 2010)."""

    alpha0: float = 0.5  # LSTM learning rate before dopamine modulation
    modulate: bool = True  # alpha(t) = alpha0 (1 + |delta(t)|); False: alpha0 ("Monkey1")
    traces: bool = True  # ETLSTM: eligibility traces of the inputs and cell states
    trace_lambda: float = 0.8  # lambda_L of the traces
    quirk: bool = True  # lnsc: a cell trace resets on sign change against the INPUT trace
    learn_lstm: bool = True
    learn_critic: bool = True
    gamma: float = 0.98  # critic discount
    critic_lambda: float = 0.9  # critic trace decay (lambda_c, not gamma * lambda)
    critic_rate: float = 0.1  # critic learning rate eta
    critic_init: float = 0.1  # every critic weight starts at this value
    error_limit: float = 0.5  # criterion: |o(t-1) - US(t)| <= this ...
    criterion_steps: int = 300  # ... for this many consecutive steps

    def as_dict(self) -> dict:
        return asdict(self)


def init_theta(dims: Dims, rngs: list[np.random.Generator], scale: float = 0.1) -> np.ndarray:
    """theta [N, P], every weight uniform in [-scale, scale]; network n draws from rngs[n]."""
    return np.stack([r.uniform(-scale, scale, dims.params) for r in rngs])


PROGRAMS = ("initial", "master", "pre", "export-check")


def network_rng(seed: int, program: str, index: int, stream: str) -> np.random.Generator:
    """The generator of network `index` of `program` in a run with `seed`, for `stream`
    ("weights": its initial weights, "env": its trials).

    Each network's draws depend only on (seed, program, index), never on how many networks
    run beside it, so any one network of a run can be re-made alone.
    """
    tag = {"weights": 0, "env": 1}[stream]
    return np.random.default_rng([seed, PROGRAMS.index(program), index, tag])
