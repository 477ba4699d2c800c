"""ONNX lowerings of `PeepholeLSTM`, built node by node with `onnx.helper` (DESIGN.md).

Two lowerings of the same network:
- `lstm`: the ONNX `LSTM` operator with peepholes `P` (plain topology only: one cell per
  block, no gate_to_gate, no gate_to_output). Fastest on ONNX Runtime's CPU provider.
- `scan`: a `Scan` over plain operators; the input projection of every step is one MatMul
  hoisted out of the loop, and each step does one MatMul for the recurrence and the input/
  forget peepholes together. Any topology; also the CUDA-friendly form of the plain one.

Inputs `x` [B, T, I] (raw units) and the state tensors of `card.state_layout()`; outputs
`y` [B, T, K] (raw units) and the final state; optionally the per-step internals.
Batch and time are symbolic. Opset 17, IR version 8 (runs on any onnxruntime >= 1.15).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.inference.card import Normalization
from training.model import PeepholeConfig, PeepholeLSTM

OPSET = 17
IR_VERSION = 8
# With the forget gate off, a zero-weight forget gate with this bias gives sigmoid(.) == 1.0
# exactly in float32, so both lowerings can keep the standard LSTM cell equations.
FORGET_OPEN_BIAS = 100.0
LSTM_ACTIVATIONS = {  # g/h name -> (ONNX activation, alpha, beta)
    "tanh": ("Tanh", None, None),
    "logistic2": ("ScaledTanh", 1.0, 0.5),  # 2*sigmoid(x) - 1 == tanh(x / 2)
    "logistic4": ("ScaledTanh", 2.0, 0.5),  # 4*sigmoid(x) - 2 == 2*tanh(x / 2)
    "identity": ("Affine", 1.0, 0.0),
}
F32 = TensorProto.FLOAT


@dataclass
class Weights:
    """The module's parameters as float32 arrays, in its layout (see training/model.py)."""

    config: PeepholeConfig
    w_input: np.ndarray  # [units, I], units = [in, forget, out] * blocks + cells
    bias: np.ndarray  # [units]
    w_recurrent: np.ndarray  # [units, cells (+ 3*blocks, block-major gates)]
    peep_in: np.ndarray  # [blocks, S]
    peep_forget: np.ndarray
    peep_out: np.ndarray
    w_output: np.ndarray  # [K, (I) + cells (+ 3*blocks)]
    b_output: np.ndarray | None  # [K]

    @classmethod
    def from_module(cls, model: PeepholeLSTM) -> Weights:
        def arr(t) -> np.ndarray:
            return t.detach().cpu().double().numpy().astype(np.float32)

        c = model.config
        w = cls(
            config=c,
            w_input=arr(model.w_input),
            bias=arr(model.bias),
            w_recurrent=arr(model.w_recurrent),
            peep_in=arr(model.peep_in),
            peep_forget=arr(model.peep_forget),
            peep_out=arr(model.peep_out),
            w_output=arr(model.output.weight),
            b_output=arr(model.output.bias) if c.bias_to_output else None,
        )
        if not c.forget_gate:
            b = slice(c.blocks, 2 * c.blocks)
            w.w_input[b] = 0.0
            w.w_recurrent[b] = 0.0
            w.peep_forget[:] = 0.0
            w.bias[b] = FORGET_OPEN_BIAS
        return w


class Builder:
    """Accumulates nodes and initializers of one (sub)graph, with unique names."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._ids = count()

    def name(self, hint: str) -> str:
        return f"{self.prefix}{hint}_{next(self._ids)}"

    def const(self, hint: str, value: np.ndarray) -> str:
        value = np.asarray(value)
        if value.dtype.kind == "f":
            value = value.astype(np.float32)
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def ints(self, hint: str, values: list[int]) -> str:
        return self.const(hint, np.array(values, dtype=np.int64))

    def op(self, op_type: str, inputs: list[str], hint: str = "", n_out: int = 1, **attrs):
        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def named(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        """A node whose output has a fixed name (a graph output)."""
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output


# ------------------------------------------------------------------ common parts
def _io(config: PeepholeConfig, internals: bool):
    """Graph inputs and outputs (value infos) per DESIGN.md."""
    c = config
    cells, blocks = c.cells, c.blocks

    def vi(name: str, *dims):
        return helper.make_tensor_value_info(name, F32, ["batch", *dims])

    inputs = [vi("x", "time", c.input_size), vi("cell_states_in", cells)]
    inputs.append(vi("cell_outputs_in", cells))
    outputs = [vi("y", "time", c.output_size), vi("cell_states_out", cells)]
    outputs.append(vi("cell_outputs_out", cells))
    if c.gate_to_gate:
        inputs.append(vi("gates_in", blocks, 3))
        outputs.append(vi("gates_out", blocks, 3))
    if internals:
        outputs += [vi("cell_states", "time", cells), vi("cell_outputs", "time", cells)]
        outputs.append(vi("gates", "time", blocks, 3))
    return inputs, outputs


def _row(v) -> np.ndarray:
    """A per-feature constant shaped [1, 1, n] to broadcast over [B, T, n]."""
    return np.asarray(v).reshape(1, 1, -1)


def _normalize_input(g: Builder, norm: Normalization | None) -> str:
    if norm is None:
        return "x"
    # [1, 1, n] rather than [n]: ONNX Runtime broadcasts a rank-1 constant over [B, T, n]
    # span by span (3x slower at T = 1000); a full-rank one takes its fast path.
    mean = g.const("input_mean", _row(norm.input_mean))
    std = g.const("input_std", _row(norm.input_std))
    return g.op("Div", [g.op("Sub", ["x", mean]), std], "x_norm")


def _output_layer(g: Builder, w: Weights, xn: str, ys: str, gates: str | None, norm) -> None:
    """y = f_out(W [1, x, y(t), gates(t)]) over [B, T, .] at once, then raw units.

    `gates` is [B, T, 3*blocks] gate-major (all input gates, all forget, all output), so the
    block-major columns of the module's output weights are permuted to match.
    """
    c = w.config
    col = 0
    terms = []
    if c.input_to_output:
        terms.append(g.op("MatMul", [xn, g.const("w_out_x", w.w_output[:, : c.input_size].T)]))
        col = c.input_size
    terms.append(g.op("MatMul", [ys, g.const("w_out_y", w.w_output[:, col : col + c.cells].T)]))
    col += c.cells
    if c.gate_to_output:
        w_g = w.w_output[:, col:].reshape(c.output_size, c.blocks, 3).transpose(0, 2, 1)
        w_g = w_g.reshape(c.output_size, 3 * c.blocks)
        terms.append(g.op("MatMul", [gates, g.const("w_out_g", w_g.T)]))
    if w.b_output is not None:
        terms.append(g.const("b_out", _row(w.b_output)))
    z = terms[0]
    for t in terms[1:]:
        z = g.op("Add", [z, t], "net_out")
    act = c.output_activation
    denorm = act == "linear" and norm is not None and norm.target_mean is not None
    if act == "logistic":
        z = g.op("Sigmoid", [z])
    elif act == "softmax":
        z = g.op("Softmax", [z], axis=-1)
    if denorm:
        z = g.op("Mul", [z, g.const("target_std", _row(norm.target_std))])
        z = g.op("Add", [z, g.const("target_mean", _row(norm.target_mean))])
    if norm is not None and norm.target_offset_input is not None:
        # The network predicts the change from an input's current value: add that value
        # (raw units) back. Per step, so streaming in chunks equals the whole sequence.
        last = g.op(
            "Gather", ["x", g.ints("offset_input", norm.target_offset_input)], "offset", axis=2
        )
        z = g.op("Add", [z, last], "y_level")
    g.named("Identity", [z], "y")


def _model(g: Builder, config: PeepholeConfig, internals: bool, doc: str) -> onnx.ModelProto:
    inputs, outputs = _io(config, internals)
    graph = helper.make_graph(g.nodes, "peephole_lstm", inputs, outputs, g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="peephole",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


# ------------------------------------------------------------------ LSTM lowering
def _lstm_params(w: Weights) -> tuple[np.ndarray, ...]:
    """Module layout (in, forget, out, cell) -> ONNX W, R, B, P (i, o, f, c / i, o, f)."""
    b = w.config.blocks
    order = np.r_[0:b, 2 * b : 3 * b, b : 2 * b, 3 * b : 4 * b]
    big_w = w.w_input[order][None]
    big_r = w.w_recurrent[order][None]
    big_b = np.concatenate([w.bias[order], np.zeros(4 * b, np.float32)])[None]
    peep = np.concatenate([w.peep_in[:, 0], w.peep_out[:, 0], w.peep_forget[:, 0]])[None]
    return big_w, big_r, big_b, peep


def lstm_graph(model: PeepholeLSTM, norm: Normalization | None = None) -> onnx.ModelProto:
    """Plain topology as one ONNX LSTM node (layout 0, Transposes around it)."""
    w = Weights.from_module(model)
    c = w.config
    if not c.plain:
        raise ValueError("the LSTM lowering needs the plain topology")
    g = Builder("")
    xn = _normalize_input(g, norm)
    x_tbi = g.op("Transpose", [xn], "x_tbi", perm=[1, 0, 2])
    axis0 = g.ints("axis0", [0])
    h0 = g.op("Unsqueeze", ["cell_outputs_in", axis0], "h0")
    c0 = g.op("Unsqueeze", ["cell_states_in", axis0], "c0")
    big_w, big_r, big_b, peep = _lstm_params(w)
    acts = [LSTM_ACTIVATIONS[c.g], LSTM_ACTIVATIONS[c.h]]
    alphas = [a for _, a, _ in acts if a is not None]
    betas = [b for _, _, b in acts if b is not None]
    attrs = {"activation_alpha": alphas, "activation_beta": betas} if alphas else {}
    inputs = [x_tbi, g.const("W", big_w), g.const("R", big_r), g.const("B", big_b), ""]
    ys, y_h, y_c = g.op(
        "LSTM",
        [*inputs, h0, c0, g.const("P", peep)],
        "lstm",
        n_out=3,
        hidden_size=c.blocks,
        activations=["Sigmoid", acts[0][0], acts[1][0]],
        **attrs,
    )
    ys = g.op("Squeeze", [ys, g.ints("axis1", [1])], "y_tbh")
    ys = g.op("Transpose", [ys], "y_bth", perm=[1, 0, 2])
    g.named("Squeeze", [y_h, axis0], "cell_outputs_out")
    g.named("Squeeze", [y_c, axis0], "cell_states_out")
    _output_layer(g, w, xn, ys, None, norm)
    return _model(g, c, False, "peephole LSTM, ONNX LSTM lowering")


# ------------------------------------------------------------------ Scan lowering
def _squash(g: Builder, name: str, x: str) -> str:
    if name == "tanh":
        return g.op("Tanh", [x])
    if name == "identity":
        return x
    half = g.op("Tanh", [g.op("Mul", [x, g.const("half", np.array(0.5))])])
    if name == "logistic2":
        return half
    if name == "logistic4":
        return g.op("Mul", [half, g.const("two", np.array(2.0))])
    raise ValueError(name)


def _block_diag(p: np.ndarray) -> np.ndarray:
    """[blocks, S] peephole weights -> [cells, blocks]: row j*S+v, column j = p[j, v]."""
    blocks, s = p.shape
    out = np.zeros((blocks * s, blocks), np.float32)
    for j in range(blocks):
        out[j * s : (j + 1) * s, j] = p[j]
    return out


def _step_matrix(w: Weights) -> np.ndarray:
    """Rows [y(t-1); gates(t-1) gate-major; s(t-1) if peepholes] -> all units of a step."""
    c = w.config
    b = c.blocks
    units = w.w_recurrent.shape[0]
    rows = [w.w_recurrent[:, : c.cells].T]
    if c.gate_to_gate:  # module columns are block-major (j, k); the Scan carries (k, j)
        g_cols = w.w_recurrent[:, c.cells :].reshape(units, b, 3).transpose(0, 2, 1)
        rows.append(g_cols.reshape(units, 3 * b).T)
    if c.peepholes:
        peep = np.zeros((c.cells, units), np.float32)
        peep[:, 0:b] = _block_diag(w.peep_in)
        peep[:, b : 2 * b] = _block_diag(w.peep_forget)
        rows.append(peep)
    return np.concatenate(rows, axis=0)


def _scan_body(w: Weights, with_gates: bool, internals: bool) -> onnx.GraphProto:
    """One time step. State: s, y (and gates gate-major); scan input: the step's projection."""
    c = w.config
    b, s_per, cells = c.blocks, c.cells_per_block, c.cells
    g = Builder("b_")
    vi = helper.make_tensor_value_info
    state_in = [vi("s_prev", F32, ["batch", cells]), vi("y_prev", F32, ["batch", cells])]
    if c.gate_to_gate:
        state_in.append(vi("g_prev", F32, ["batch", 3 * b]))
    proj = vi("proj_t", F32, ["batch", 3 * b + cells])
    rec = ["y_prev"] + (["g_prev"] if c.gate_to_gate else []) + (["s_prev"] * c.peepholes)
    r = rec[0] if len(rec) == 1 else g.op("Concat", rec, "rec", axis=1)
    z = g.op("Add", [g.op("MatMul", [r, g.const("w_step", _step_matrix(w))]), "proj_t"], "z")
    z_if, z_o, z_c = g.op("Split", [z, g.ints("split", [2 * b, b, cells])], "z", 3, axis=1)
    a_if = g.op("Sigmoid", [z_if], "a_if")
    if s_per > 1:  # one gate value per block -> one per cell
        expand2 = np.kron(np.eye(2 * b, dtype=np.float32), np.ones((1, s_per), np.float32))
        a_if_cells = g.op("MatMul", [a_if, g.const("expand2", expand2)])
    else:
        a_if_cells = a_if
    y_in, y_fg = g.op("Split", [a_if_cells, g.ints("split2", [cells, cells])], "a", 2, axis=1)
    gc = _squash(g, c.g, z_c)
    kept = g.op("Mul", [y_fg, "s_prev"]) if c.forget_gate else "s_prev"
    s_new = g.named("Add", [kept, g.op("Mul", [y_in, gc])], "s_next")
    net_o = z_o
    if c.peepholes:
        peep_o = g.op("MatMul", [s_new, g.const("peep_out", _block_diag(w.peep_out))])
        net_o = g.op("Add", [z_o, peep_o], "net_o")
    a_o = g.op("Sigmoid", [net_o], "a_o")
    a_o_cells = a_o
    if s_per > 1:
        expand = np.kron(np.eye(b, dtype=np.float32), np.ones((1, s_per), np.float32))
        a_o_cells = g.op("MatMul", [a_o, g.const("expand", expand)])
    y_new = g.named("Mul", [a_o_cells, _squash(g, c.h, s_new)], "y_next")
    # Graph outputs: new state, then the scan (per-step) outputs (distinct names: Identity).
    out_vi = [vi("s_next", F32, ["batch", cells]), vi("y_next", F32, ["batch", cells])]
    if with_gates:  # gate-major: all input gates, all forget gates, all output gates
        gates = g.named("Concat", [a_if, a_o], "g_next", axis=1)
    if c.gate_to_gate:
        out_vi.append(vi("g_next", F32, ["batch", 3 * b]))
    scan_outs = [("y_seq", y_new, cells)]
    if internals:
        scan_outs.append(("s_seq", s_new, cells))
    if with_gates:
        scan_outs.append(("g_seq", gates, 3 * b))
    for name, value, width in scan_outs:
        g.named("Identity", [value], name)
        out_vi.append(vi(name, F32, ["batch", width]))
    return helper.make_graph(g.nodes, "step", [*state_in, proj], out_vi, g.initializers)


def scan_graph(
    model: PeepholeLSTM, norm: Normalization | None = None, internals: bool = False
) -> onnx.ModelProto:
    """Any topology as a Scan over plain operators (the input projection hoisted out)."""
    w = Weights.from_module(model)
    c = w.config
    b = c.blocks
    with_gates = internals or c.gate_to_gate or c.gate_to_output
    g = Builder("")
    xn = _normalize_input(g, norm)
    proj = g.op("MatMul", [xn, g.const("w_input", w.w_input.T)], "proj")
    proj = g.op("Add", [proj, g.const("bias", w.bias)], "proj")
    proj = g.op("Transpose", [proj], "proj_tbu", perm=[1, 0, 2])
    state = ["cell_states_in", "cell_outputs_in"]
    if c.gate_to_gate:  # [B, blocks, 3] -> gate-major [B, 3*blocks]
        g_t = g.op("Transpose", ["gates_in"], "gates_t", perm=[0, 2, 1])
        state.append(g.op("Reshape", [g_t, g.ints("shape_b3", [0, 3 * b])], "g0"))
    n_state = len(state)
    n_scan_out = 1 + internals + with_gates
    outs = g.op(
        "Scan",
        [*state, proj],
        "scan",
        n_out=n_state + n_scan_out,
        body=_scan_body(w, with_gates, internals),
        num_scan_inputs=1,
    )
    g.named("Identity", [outs[0]], "cell_states_out")
    g.named("Identity", [outs[1]], "cell_outputs_out")
    if c.gate_to_gate:
        g_out = g.op("Reshape", [outs[2], g.ints("shape_3b", [0, 3, b])], "g_out")
        g.named("Transpose", [g_out], "gates_out", perm=[0, 2, 1])
    seq = iter(outs[n_state:])
    ys = g.op("Transpose", [next(seq)], "y_bth", perm=[1, 0, 2])
    s_seq = next(seq) if internals else None
    g_seq = next(seq) if with_gates else None
    gates_bt = None
    if with_gates:
        gates_bt = g.op("Transpose", [g_seq], "gates_bt", perm=[1, 0, 2])  # [B, T, 3b]
    _output_layer(g, w, xn, ys, gates_bt if c.gate_to_output else None, norm)
    if internals:
        g.named("Transpose", [s_seq], "cell_states", perm=[1, 0, 2])
        g.named("Identity", [ys], "cell_outputs")
        g4 = g.op("Reshape", [gates_bt, g.ints("shape_bt3b", [0, 0, 3, b])], "g4")
        g.named("Transpose", [g4], "gates", perm=[0, 1, 3, 2])
    kind = "internals" if internals else "Scan"
    return _model(g, c, internals, f"peephole LSTM, Scan lowering ({kind})")
