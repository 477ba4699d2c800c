"""The peephole LSTM with lnsc memory blocks, in one readable file (equations: docs/MODEL.md).

One layer of `blocks` memory blocks, each with `cells_per_block` cells sharing an input,
a forget and an output gate, followed by the output layer. Batch-first throughout.

Parameter layout (the exporter and the tests read it, so it is part of this module's API):
- units, in this order: input gates (blocks), forget gates (blocks), output gates (blocks),
  cell inputs (cells, block-major: cell v of block j is `j*cells_per_block + v`);
- `w_input` [units, input_size] and `bias` [units] act on the constant 1 and x(t);
- `w_recurrent` [units, cells (+ 3*blocks)] acts on y(t-1) and, with `gate_to_gate`, on the
  previous gates flattened block-major as in the state tensor `gates` [blocks, 3]
  (input, forget, output of block 0, then block 1, ...);
- `peep_in`, `peep_forget`, `peep_out` [blocks, cells_per_block] (zero buffers when
  peepholes are off, so they never train);
- `output` (nn.Linear) acts on [x(t) if input_to_output, y(t), gates(t) if gate_to_output]
  with the gates flattened block-major; its bias is the `bias_to_output` constant 1.
With the forget gate off the forget rows stay in the tensors but are ignored (y_fg = 1).

`forward(x, state=None, return_internals=False, return_preactivation=False)` returns
`(y, state)` or `(y, state, internals)`. y is after the output activation, unless
`return_preactivation=True`: then it is the output layer's pre-activation (logits), for
numerically stable losses (`BCEWithLogitsLoss`, `CrossEntropyLoss`). `preactivation_to_output`
maps logits to outputs. The input projection of all steps is computed before the time loop;
the loop does one matrix product per step.

Threads: the per-step tensors are tiny, and with several intra-op threads on a busy machine
each op can wait milliseconds at OpenMP barriers (measured: 4 us -> 2 ms per addmm on two
shared cores). Run the recurrent loop single-threaded: `torch.set_num_threads(1)` in a
training process, or `with single_thread(): ...` around a call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from app.inference.card import Architecture

State = dict[str, Tensor]


@dataclass
class PeepholeConfig:
    """Every knob of the network; the same fields and defaults as `card.Architecture`."""

    input_size: int
    output_size: int
    blocks: int = 2
    cells_per_block: int = 1
    peepholes: bool = True
    forget_gate: bool = True
    gate_to_gate: bool = False
    input_to_output: bool = False
    bias_to_output: bool = True
    gate_to_output: bool = False
    g: str = "logistic2"
    h: str = "logistic2"
    output_activation: str = "logistic"
    init_range: float = 0.1
    gate_bias_step: float = 0.0
    forget_bias: float = 0.0

    @property
    def cells(self) -> int:
        return self.blocks * self.cells_per_block

    @property
    def plain(self) -> bool:
        return self.to_architecture().plain

    def to_architecture(self) -> Architecture:
        """Validates the knobs too (pydantic)."""
        return Architecture(**asdict(self))

    @classmethod
    def from_architecture(cls, arch: Architecture) -> PeepholeConfig:
        return cls(**{f.name: getattr(arch, f.name) for f in fields(cls)})


def squash(name: str, x: Tensor) -> Tensor:
    """The cell input/output squashing functions g and h."""
    if name == "tanh":
        return torch.tanh(x)
    if name == "logistic2":  # 2*sigmoid(x) - 1, computed as tanh(x/2) (fewer ops, same value)
        return torch.tanh(0.5 * x)
    if name == "logistic4":  # 4*sigmoid(x) - 2 == 2*tanh(x/2)
        return 2.0 * torch.tanh(0.5 * x)
    if name == "identity":
        return x
    raise ValueError(f"unknown squashing function {name!r}")


def output_activation(name: str, z: Tensor) -> Tensor:
    if name == "linear":
        return z
    if name == "logistic":
        return torch.sigmoid(z)
    if name == "softmax":
        return torch.softmax(z, dim=-1)
    raise ValueError(f"unknown output activation {name!r}")


@contextmanager
def single_thread() -> Iterator[None]:
    """Temporarily run torch ops on one intra-op thread (see the module docstring)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class PeepholeLSTM(nn.Module):
    """One layer of lnsc memory blocks plus the output layer."""

    def __init__(self, config: PeepholeConfig) -> None:
        super().__init__()
        config.to_architecture()  # validate early
        self.config = c = config
        units = 3 * c.blocks + c.cells
        recurrent = c.cells + (3 * c.blocks if c.gate_to_gate else 0)
        self.w_input = nn.Parameter(torch.empty(units, c.input_size))
        self.bias = nn.Parameter(torch.empty(units))
        self.w_recurrent = nn.Parameter(torch.empty(units, recurrent))
        for name in ("peep_in", "peep_forget", "peep_out"):
            shape = (c.blocks, c.cells_per_block)
            if c.peepholes:
                self.register_parameter(name, nn.Parameter(torch.empty(shape)))
            else:
                self.register_buffer(name, torch.zeros(shape))
        out_in = (c.input_size if c.input_to_output else 0) + c.cells
        out_in += 3 * c.blocks if c.gate_to_output else 0
        self.output = nn.Linear(out_in, c.output_size, bias=c.bias_to_output)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """lnsc init: all weights U[-r, r]; then the optional gate bias offsets."""
        c = self.config
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-c.init_range, c.init_range)
            b = c.blocks
            steps = c.gate_bias_step * torch.arange(1, b + 1, dtype=self.bias.dtype)
            self.bias[0:b] -= steps  # input gates
            self.bias[2 * b : 3 * b] -= steps  # output gates
            self.bias[b : 2 * b] += c.forget_bias

    # ----------------------------------------------------------------- state
    def initial_state(self, batch: int) -> State:
        """All zeros (as in the papers), on the module's device and dtype."""
        c = self.config
        kw = {"dtype": self.bias.dtype, "device": self.bias.device}
        state = {
            "cell_states": torch.zeros(batch, c.cells, **kw),
            "cell_outputs": torch.zeros(batch, c.cells, **kw),
        }
        if c.gate_to_gate:
            state["gates"] = torch.zeros(batch, c.blocks, 3, **kw)
        return state

    # --------------------------------------------------------------- forward
    def _step_weights(self) -> tuple[Tensor, Tensor]:
        """[recurrent; in/forget peepholes] as one matrix, so each step is one matmul.

        Rows: y(t-1), gates(t-1) (with gate_to_gate), s(t-1). The s rows hold the
        block-diagonal peephole weights of the input and forget gates, zero elsewhere.
        Also returns p_out [blocks, S] for the output gate (which peeks at s(t)).
        """
        c = self.config
        b = c.blocks
        units = self.w_recurrent.shape[0]
        eye = torch.eye(b, dtype=self.bias.dtype, device=self.bias.device)
        # [b, S] -> block-diagonal [cells, b]: row j*S+v, column j holds p[j, v].
        peep_in = (self.peep_in[:, :, None] * eye[:, None, :]).reshape(c.cells, b)
        peep_fg = (self.peep_forget[:, :, None] * eye[:, None, :]).reshape(c.cells, b)
        rest = torch.zeros(c.cells, units - 2 * b, dtype=eye.dtype, device=eye.device)
        peep_rows = torch.cat([peep_in, peep_fg, rest], dim=1)
        w = torch.cat([self.w_recurrent.t(), peep_rows], dim=0)
        return w, self.peep_out

    def forward(
        self,
        x: Tensor,
        state: State | None = None,
        return_internals: bool = False,
        return_preactivation: bool = False,
    ) -> tuple[Tensor, State] | tuple[Tensor, State, dict[str, Tensor]]:
        """x [B, T, input_size] -> y [B, T, output_size] and the state after the last step."""
        c = self.config
        bsz, steps, _ = x.shape
        if steps < 1:
            raise ValueError("x needs at least one time step")
        if state is None:
            state = self.initial_state(bsz)
        # Hoisted out of the loop: bias + input contribution for every step, time-major, and
        # unbound once (indexing proj[:, t] per step would make backward allocate a full
        # [B, T, units] gradient per step).
        proj = torch.nn.functional.linear(x.transpose(0, 1), self.w_input, self.bias)
        need_gates = return_internals or c.gate_to_output or c.gate_to_gate
        cell_states, cell_outputs, gate_seq, new_state = self._recur(
            proj.unbind(0), state, need_gates
        )
        y_all = torch.stack(cell_outputs, dim=1)
        g_all = torch.stack(gate_seq, dim=1) if gate_seq else None
        logits = self.output_preactivation(x, y_all, g_all)
        out = logits if return_preactivation else self.preactivation_to_output(logits)
        if not return_internals:
            return out, new_state
        internals = {
            "cell_states": torch.stack(cell_states, dim=1),
            "cell_outputs": y_all,
            "gates": g_all,
        }
        return out, new_state, internals

    def _recur(
        self, projections: tuple[Tensor, ...], state: State, need_gates: bool
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], State]:
        """The time loop: per-step cell states, cell outputs, gates, and the final state."""
        c = self.config
        b, s, cells = c.blocks, c.cells_per_block, c.cells
        w_step, p_out = self._step_weights()
        cs, ys = state["cell_states"], state["cell_outputs"]
        bsz = cs.shape[0]
        g_flat = state["gates"].reshape(bsz, 3 * b) if c.gate_to_gate else None
        cell_states, cell_outputs, gate_seq = [], [], []
        for proj_t in projections:
            rec = [ys, g_flat, cs] if c.gate_to_gate else [ys, cs]
            z = torch.addmm(proj_t, torch.cat(rec, dim=1), w_step)
            z_if, z_out, z_cell = z.split([2 * b, b, cells], dim=1)
            y_in, y_fg = torch.sigmoid(z_if)[:, :, None].split(b, dim=1)  # [B, blocks, 1]
            s_prev = cs.reshape(bsz, b, s)
            gc = squash(c.g, z_cell).view(bsz, b, s)
            s_new = y_in * gc + (y_fg * s_prev if c.forget_gate else s_prev)
            y_out = torch.sigmoid(z_out + (s_new * p_out).sum(dim=2))
            y_new = y_out[:, :, None] * squash(c.h, s_new)
            cs, ys = s_new.reshape(bsz, cells), y_new.reshape(bsz, cells)
            cell_states.append(cs)
            cell_outputs.append(ys)
            if need_gates:
                fg = y_fg if c.forget_gate else torch.ones_like(y_fg)
                g3 = torch.cat([y_in, fg, y_out[:, :, None]], dim=2)  # [B, blocks, 3]
                gate_seq.append(g3)
                g_flat = g3.reshape(bsz, 3 * b)
        final: State = {"cell_states": cs, "cell_outputs": ys}
        if c.gate_to_gate:
            final["gates"] = g_flat.reshape(bsz, b, 3)
        return cell_states, cell_outputs, gate_seq, final

    def output_preactivation(self, x: Tensor, y: Tensor, gates: Tensor | None) -> Tensor:
        """The output layer before f_out, for all steps at once: [B, T, output_size]."""
        c = self.config
        parts = [x] if c.input_to_output else []
        parts.append(y)
        if c.gate_to_output:
            parts.append(gates.flatten(start_dim=2))
        return self.output(torch.cat(parts, dim=-1))

    def preactivation_to_output(self, logits: Tensor) -> Tensor:
        return output_activation(self.config.output_activation, logits)
