"""ONNX lowerings vs the PyTorch module, and the written model version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from app.inference.card import ModelCard, Normalization, sha256_file, state_layout
from tests.training.common import configs, corrupt_lstm_graph, random_model, random_state
from training.export import ExportMismatch, build_graphs, export_model
from training.model import PeepholeConfig, PeepholeLSTM
from training.onnx_graphs import lstm_graph, scan_graph

TOL = 1e-5


def run_graph(graph: onnx.ModelProto, x: np.ndarray, state: dict) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"x": x.astype(np.float32)}
    feeds.update({f"{k}_in": v.numpy().astype(np.float32) for k, v in state.items()})
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def torch_outputs(model: PeepholeLSTM, x: np.ndarray, state: dict) -> dict[str, np.ndarray]:
    ref = PeepholeLSTM(model.config).double()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        y, final, internals = ref(
            torch.from_numpy(x).double(),
            {k: v.double() for k, v in state.items()},
            return_internals=True,
        )
    out = {"y": y, **{f"{k}_out": v for k, v in final.items()}, **internals}
    return {k: v.numpy() for k, v in out.items()}


def assert_outputs_match(got: dict, want: dict) -> None:
    for name, value in got.items():
        np.testing.assert_allclose(value, want[name], atol=TOL, rtol=TOL, err_msg=name)


@settings(max_examples=20, deadline=None)
@given(config=configs(), seed=st.integers(0, 2**16), steps=st.sampled_from([2, 13]))
def test_lowerings_match_module(config: PeepholeConfig, seed: int, steps: int) -> None:
    """Both lowerings (where they apply) and the internals graph, at lengths never checked."""
    model = random_model(config, seed)
    x = np.random.default_rng(seed).standard_normal((3, steps, config.input_size))
    state = random_state(model, 3, seed)
    want = torch_outputs(model, x, state)
    graphs = {"scan": scan_graph(model), "internals": scan_graph(model, internals=True)}
    if config.plain:
        graphs["lstm"] = lstm_graph(model)
    for kind, graph in graphs.items():
        got = run_graph(graph, x, state)
        expected = {"y", *(f"{s.name}_out" for s in state_layout(config.to_architecture()))}
        if kind == "internals":
            expected |= {"cell_states", "cell_outputs", "gates"}
        assert set(got) == expected, kind
        assert_outputs_match(got, want)


KNOBS = {
    "plain-tanh-linear": dict(blocks=3, g="tanh", h="tanh", output_activation="linear"),
    "plain-no-forget": dict(forget_gate=False, g="logistic4", h="identity"),
    "plain-no-peepholes-softmax": dict(peepholes=False, output_activation="softmax"),
    "plain-input-to-output": dict(input_to_output=True, bias_to_output=False),
    "lnsc-2x2": dict(blocks=2, cells_per_block=2),
    "gate-to-gate": dict(gate_to_gate=True, forget_gate=False, init_range=0.5),
    "gate-to-output": dict(cells_per_block=3, gate_to_output=True, output_activation="softmax"),
    "everything": dict(
        cells_per_block=2,
        gate_to_gate=True,
        gate_to_output=True,
        input_to_output=True,
        g="identity",
        h="tanh",
        output_activation="linear",
    ),
}


@pytest.mark.parametrize("knobs", KNOBS.values(), ids=KNOBS.keys())
def test_export_writes_a_valid_version(tmp_path: Path, knobs: dict) -> None:
    config = PeepholeConfig(input_size=2, output_size=2, **knobs)
    model = random_model(config, 7)
    norm = Normalization(input_mean=[1.0, -2.0], input_std=[0.5, 3.0])
    if config.output_activation == "linear":
        norm.target_mean, norm.target_std = [10.0, -1.0], [2.0, 0.1]
        norm.target_offset_input = [1, 0]  # outputs are changes from inputs b and a
    version_dir = export_model(
        model,
        tmp_path,
        "toy",
        task="toy",
        training={"seed": 3, "data": {"n": 1}},
        input_names=["a", "b"],
        output_names=["p", "q"],
        normalization=norm,
    )
    assert version_dir == tmp_path / "toy" / "1"
    card = ModelCard.model_validate_json((version_dir / "model.json").read_text())
    assert card.onnx.sha256 == sha256_file(version_dir / "model.onnx")
    assert card.onnx.internals.sha256 == sha256_file(version_dir / "model.internals.onnx")
    assert card.onnx.lowering == ("lstm" if config.plain else "scan")
    assert card.state == state_layout(config.to_architecture())
    assert card.training.seed == 3 and card.training.task == "toy"
    assert PeepholeConfig.from_architecture(card.architecture) == config
    ops = {n.op_type for n in onnx.load(version_dir / "model.onnx").graph.node}
    assert ("LSTM" in ops) == config.plain and ("Scan" in ops) != config.plain
    if config.plain:
        assert card.onnx.cuda.sha256 == sha256_file(version_dir / "model.cuda.onnx")
        cuda = onnx.load(version_dir / "model.cuda.onnx")
        assert "LSTM" not in {n.op_type for n in cuda.graph.node}
    else:
        assert card.onnx.cuda is None and not (version_dir / "model.cuda.onnx").exists()
    _check_raw_units(version_dir, model, norm)


def _check_raw_units(version_dir: Path, model: PeepholeLSTM, norm: Normalization) -> None:
    """The written graph takes raw x and returns raw y: normalisation is inside it."""
    rng = np.random.default_rng(0)
    x_raw = np.asarray(norm.input_mean) + np.asarray(norm.input_std) * rng.standard_normal(
        (2, 9, 2)
    )
    state = random_state(model, 2, 5)
    got = run_graph(onnx.load(version_dir / "model.onnx"), x_raw, state)
    want = torch_outputs(model, (x_raw - norm.input_mean) / np.asarray(norm.input_std), state)
    if norm.target_mean is not None:
        want["y"] = want["y"] * np.asarray(norm.target_std) + np.asarray(norm.target_mean)
    if norm.target_offset_input is not None:
        want["y"] = want["y"] + x_raw[..., norm.target_offset_input]
    assert_outputs_match(got, want)


def test_versions_count_up_and_cards_are_json(tmp_path: Path) -> None:
    model = random_model(PeepholeConfig(input_size=1, output_size=1), 0)
    kw = dict(task="t", training={"seed": 0, "data": {}}, input_names=["x"], output_names=["y"])
    first = export_model(model, tmp_path, "m", internals=False, **kw)
    second = export_model(model, tmp_path, "m", **kw)
    assert (first.name, second.name) == ("1", "2")
    assert not (first / "model.internals.onnx").exists()
    assert json.loads((second / "model.json").read_text())["onnx"]["opset"] == 17
    with pytest.raises(FileExistsError):
        export_model(model, tmp_path, "m", version=2, **kw)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]


class _Drifting(PeepholeLSTM):
    """A module whose forward no longer matches its weights (a lowering bug, seen from torch)."""

    def forward(self, x, state=None, return_internals=False, return_preactivation=False):
        out = super().forward(x, state, return_internals, return_preactivation)
        return (out[0] + 1e-3, *out[1:])


@pytest.mark.parametrize("how", ["module", "graph"])
def test_mismatch_refuses_to_write(tmp_path: Path, monkeypatch, how: str) -> None:
    config = PeepholeConfig(input_size=1, output_size=1, blocks=2)
    if how == "module":
        torch.manual_seed(0)
        model = _Drifting(config)
    else:
        model = random_model(config, 0)
        corrupt_lstm_graph(monkeypatch)
    with pytest.raises(ExportMismatch):
        export_model(
            model,
            tmp_path,
            "bad",
            task="t",
            training={"seed": 0, "data": {}},
            input_names=["x"],
            output_names=["y"],
        )
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_bad_normalisation_is_refused() -> None:
    model = random_model(PeepholeConfig(input_size=2, output_size=1), 0)
    with pytest.raises(ValueError):
        build_graphs(model, Normalization(input_mean=[0.0], input_std=[1.0]))
    with pytest.raises(ValueError):  # target statistics need a linear output
        build_graphs(
            model,
            Normalization(input_mean=[0, 0], input_std=[1, 1], target_mean=[0], target_std=[1]),
        )


def test_build_graphs_kinds() -> None:
    plain = random_model(PeepholeConfig(input_size=1, output_size=1), 0)
    lnsc = random_model(PeepholeConfig(input_size=1, output_size=1, cells_per_block=2), 0)
    assert set(build_graphs(plain)) == {"model", "internals", "cuda"}
    assert set(build_graphs(lnsc)) == {"model", "internals"}
    assert set(build_graphs(lnsc, internals=False)) == {"model"}
