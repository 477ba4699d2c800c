"""PyTorch module vs the independent numpy reference, over random knob combinations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from app.inference.card import Architecture
from tests.training.common import arch_dict, configs, random_model, random_state, reference_weights
from tests.training.reference import run_sequence
from training.model import PeepholeConfig, PeepholeLSTM

FAST = settings(max_examples=25, deadline=None)


@FAST
@given(config=configs(), seed=st.integers(0, 2**16), steps=st.integers(1, 6))
def test_matches_reference(config: PeepholeConfig, seed: int, steps: int) -> None:
    model = random_model(config, seed, torch.float64)
    batch = 2
    x = torch.randn(
        batch,
        steps,
        config.input_size,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(seed),
    )
    state = random_state(model, batch, seed + 1)
    with torch.no_grad():
        y, final, internals = model(x, state, return_internals=True)
    weights = reference_weights(model)
    for i in range(batch):
        ref = run_sequence(
            arch_dict(config),
            weights,
            x[i].numpy(),
            s0=state["cell_states"][i].numpy(),
            y0=state["cell_outputs"][i].numpy(),
            gates0=state["gates"][i].numpy() if config.gate_to_gate else None,
        )
        np.testing.assert_allclose(y[i].numpy(), ref["y"], atol=1e-9, rtol=0)
        for name in ("cell_states", "cell_outputs", "gates"):
            np.testing.assert_allclose(internals[name][i].numpy(), ref[name], atol=1e-9, rtol=0)
        for name, value in final.items():
            np.testing.assert_allclose(value[i].numpy(), ref["final"][name], atol=1e-9, rtol=0)


@FAST
@given(config=configs(), seed=st.integers(0, 2**16), cut=st.integers(1, 7))
def test_chunks_equal_whole_pass(config: PeepholeConfig, seed: int, cut: int) -> None:
    model = random_model(config, seed)
    x = torch.randn(3, 8, config.input_size, generator=torch.Generator().manual_seed(seed))
    state = random_state(model, 3, seed)
    with torch.no_grad():
        whole, whole_state = model(x, state)
        first, mid = model(x[:, :cut], state)
        second, end = model(x[:, cut:], mid)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-6, rtol=1e-5)
    for name in whole_state:
        torch.testing.assert_close(end[name], whole_state[name], atol=1e-6, rtol=1e-5)


@FAST
@given(config=configs(), seed=st.integers(0, 2**16))
def test_preactivation_maps_to_output(config: PeepholeConfig, seed: int) -> None:
    model = random_model(config, seed)
    x = torch.randn(2, 4, config.input_size)
    with torch.no_grad():
        y, _ = model(x)
        logits, _ = model(x, return_preactivation=True)
    torch.testing.assert_close(model.preactivation_to_output(logits), y)


def test_forget_gate_off_is_one_and_state_shapes() -> None:
    config = PeepholeConfig(
        input_size=2,
        output_size=1,
        blocks=2,
        cells_per_block=3,
        forget_gate=False,
        gate_to_gate=True,
    )
    model = random_model(config, 0)
    with torch.no_grad():
        _, state, internals = model(torch.randn(4, 5, 2), return_internals=True)
    assert torch.all(internals["gates"][..., 1] == 1.0)
    assert state["cell_states"].shape == (4, 6)
    assert state["cell_outputs"].shape == (4, 6)
    assert state["gates"].shape == (4, 2, 3)
    assert internals["cell_states"].shape == (4, 5, 6)
    assert internals["gates"].shape == (4, 5, 2, 3)


def test_initialisation() -> None:
    config = PeepholeConfig(
        input_size=3,
        output_size=2,
        blocks=3,
        init_range=0.1,
        gate_bias_step=1.0,
        forget_bias=2.0,
        peepholes=False,
    )
    model = PeepholeLSTM(config)
    names = {n for n, _ in model.named_parameters()}
    assert not names & {"peep_in", "peep_forget", "peep_out"}
    assert torch.all(model.peep_in == 0)
    assert all(p.abs().max() <= 0.1 for n, p in model.named_parameters() if n != "bias")
    b = model.bias.detach()
    for j in range(3):
        assert -0.1 - (j + 1) <= b[j] <= 0.1 - (j + 1)  # input gate
        assert 1.9 <= b[3 + j] <= 2.1  # forget gate
        assert -0.1 - (j + 1) <= b[6 + j] <= 0.1 - (j + 1)  # output gate
    assert b[9:].abs().max() <= 0.1


def test_config_round_trip() -> None:
    config = PeepholeConfig(input_size=2, output_size=1, cells_per_block=2, g="tanh")
    arch = config.to_architecture()
    assert isinstance(arch, Architecture)
    assert PeepholeConfig.from_architecture(arch) == config
    with pytest.raises(ValueError):
        PeepholeConfig(input_size=0, output_size=1).to_architecture()


def test_gradients_reach_every_parameter() -> None:
    config = PeepholeConfig(
        input_size=2,
        output_size=2,
        cells_per_block=2,
        gate_to_gate=True,
        gate_to_output=True,
        input_to_output=True,
    )
    model = random_model(config, 1)
    y, _ = model(torch.randn(2, 6, 2))
    y.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_config_declares_the_card_architecture() -> None:
    """PeepholeConfig and the card's Architecture list the same knobs with the same defaults."""
    arch_fields = Architecture.model_fields
    config_fields = {f.name: f for f in dataclasses.fields(PeepholeConfig)}
    assert set(config_fields) == set(arch_fields)
    for name, f in config_fields.items():
        if f.default is not dataclasses.MISSING:
            assert f.default == arch_fields[name].default, name
