"""Shared helpers of the model tests: random configurations, models and states."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import onnx
import pytest
import torch
from hypothesis import strategies as st

from training.model import PeepholeConfig, PeepholeLSTM

SQUASHES = ["tanh", "logistic2", "logistic4", "identity"]
ACTIVATIONS = ["linear", "logistic", "softmax"]


@st.composite
def configs(draw: st.DrawFn, plain: bool | None = None) -> PeepholeConfig:
    """Random knob combinations; `plain` forces (or forbids) the LSTM-operator topology."""
    cells_per_block = draw(st.integers(1, 3))
    gate_to_gate = draw(st.booleans())
    gate_to_output = draw(st.booleans())
    if plain is True:
        cells_per_block, gate_to_gate, gate_to_output = 1, False, False
    return PeepholeConfig(
        input_size=draw(st.integers(1, 3)),
        output_size=draw(st.integers(1, 3)),
        blocks=draw(st.integers(1, 3)),
        cells_per_block=cells_per_block,
        peepholes=draw(st.booleans()),
        forget_gate=draw(st.booleans()),
        gate_to_gate=gate_to_gate,
        input_to_output=draw(st.booleans()),
        bias_to_output=draw(st.booleans()),
        gate_to_output=gate_to_output,
        g=draw(st.sampled_from(SQUASHES)),
        h=draw(st.sampled_from(SQUASHES)),
        output_activation=draw(st.sampled_from(ACTIVATIONS)),
        init_range=draw(st.sampled_from([0.1, 0.5, 1.0])),
        gate_bias_step=draw(st.sampled_from([0.0, 0.5])),
        forget_bias=draw(st.sampled_from([0.0, 1.0])),
    )


def random_model(config: PeepholeConfig, seed: int, dtype=torch.float32) -> PeepholeLSTM:
    torch.manual_seed(seed)
    return PeepholeLSTM(config).to(dtype).eval()


def random_state(model: PeepholeLSTM, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """A non-zero state of plausible magnitude (gates in (0, 1))."""
    gen = torch.Generator().manual_seed(seed)
    state = model.initial_state(batch)
    out = {}
    for name, t in state.items():
        r = torch.rand(t.shape, generator=gen, dtype=t.dtype)
        out[name] = r if name == "gates" else 2.0 * r - 1.0
    return out


def reference_weights(model: PeepholeLSTM) -> dict[str, np.ndarray]:
    """Translate the module's packed parameters into the reference's per-gate weights."""
    c = model.config
    b, s = c.blocks, c.cells_per_block
    w_u = (
        torch.cat(
            [model.bias.detach()[:, None], model.w_input.detach(), model.w_recurrent.detach()],
            dim=1,
        )
        .double()
        .numpy()
    )
    lin = model.output
    w_o = lin.weight.detach().double().numpy()
    if c.bias_to_output:
        w_o = np.concatenate([lin.bias.detach().double().numpy()[:, None], w_o], axis=1)
    return {
        "w_in": w_u[0:b],
        "w_fg": w_u[b : 2 * b],
        "w_out": w_u[2 * b : 3 * b],
        "w_c": w_u[3 * b :].reshape(b, s, -1),
        "p_in": model.peep_in.detach().double().numpy(),
        "p_fg": model.peep_forget.detach().double().numpy(),
        "p_out": model.peep_out.detach().double().numpy(),
        "w_o": w_o,
    }


def arch_dict(config: PeepholeConfig) -> dict:
    return asdict(config)


def corrupt_lstm_graph(monkeypatch: pytest.MonkeyPatch, by: float = 1e-2) -> None:
    """A lowering bug: the exporter's LSTM-operator graph gets one recurrent weight off by `by`."""
    from training import export as export_mod

    real = export_mod.lstm_graph

    def corrupted(model, norm=None):
        graph = real(model, norm)
        init = next(i for i in graph.graph.initializer if i.name.startswith("R"))
        arr = onnx.numpy_helper.to_array(init).copy()
        arr.flat[0] += by
        init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        return graph

    monkeypatch.setattr(export_mod, "lstm_graph", corrupted)
