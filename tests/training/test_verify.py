"""training/verify.py: the export check refuses lowering bugs and accepts float32 rounding.

Each bug is injected into the graph builder (training/onnx_graphs.py) and must be refused,
on both lowerings where it applies; a network whose float32 runs drift far from exact
arithmetic (where a fixed tolerance against float32 PyTorch refused it) must be accepted.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from app.inference.card import Normalization
from tests.training.common import random_model
from training import onnx_graphs
from training.export import build_graphs, export_model
from training.model import PeepholeConfig, PeepholeLSTM
from training.verify import (
    CheckInputs,
    CheckRule,
    ExportMismatch,
    Finding,
    cases,
    error,
    reference,
    session,
    verify,
)

NORM = Normalization(input_mean=[2.0, -1.0], input_std=[3.0, 0.5],
                     target_mean=[10.0], target_std=[4.0])  # fmt: skip
INPUTS = CheckInputs(data=[np.random.default_rng(0).uniform(-4, 8, (2, 30, 2))],
                     low=np.array([-4.0, -2.0]), high=np.array([8.0, 0.0]), length=50)  # fmt: skip


def _model(**knobs) -> PeepholeLSTM:
    config = PeepholeConfig(input_size=2, output_size=1, blocks=3, g="tanh", h="tanh",
                            output_activation="linear", init_range=0.5, **knobs)  # fmt: skip
    return random_model(config, 11)


def _export(tmp_path, model: PeepholeLSTM) -> None:
    export_model(model, tmp_path, "m", task="t", training={"seed": 0, "data": {}},
                 input_names=["a", "b"], output_names=["y"], normalization=NORM,
                 check_inputs=INPUTS)  # fmt: skip


def test_correct_lowerings_pass(tmp_path):
    for knobs in ({}, {"cells_per_block": 2}):  # LSTM operator, and Scan
        _export(tmp_path, _model(**knobs))
    assert len(list((tmp_path / "m").iterdir())) == 2


def _swapped_gates(real):
    def lstm_params(w):
        big_w, big_r, big_b, peep = real(w)
        b = w.config.blocks  # ONNX order i, o, f, c: swap o and f
        order = np.r_[0:b, 2 * b : 3 * b, b : 2 * b, 3 * b : 4 * b]
        return (
            big_w[:, order],
            big_r[:, order],
            np.concatenate([big_b[:, : 4 * b][:, order], big_b[:, 4 * b :]], axis=1),
            peep,
        )

    return lstm_params


def _wrong_peephole_lstm(real):
    def lstm_params(w):
        big_w, big_r, big_b, peep = real(w)
        b = w.config.blocks  # P order i, o, f: the input gate gets the forget gate's peephole
        return big_w, big_r, big_b, peep[:, np.r_[2 * b : 3 * b, b : 2 * b, 0:b]]

    return lstm_params


def _wrong_peephole_scan(real):
    def block_diag(p):  # the output gate peeks at s(t) with the wrong (negated) weights
        return real(-p)

    return block_diag


@pytest.mark.parametrize("bug", ["swapped gate order", "wrong peephole (LSTM)",
                                 "wrong peephole (Scan)", "dropped normalisation",
                                 "dropped de-normalisation"])  # fmt: skip
def test_lowering_bugs_are_refused(tmp_path, monkeypatch, bug):
    knobs = {"cells_per_block": 2} if "Scan" in bug else {}
    if bug == "swapped gate order":
        monkeypatch.setattr(onnx_graphs, "_lstm_params", _swapped_gates(onnx_graphs._lstm_params))
    elif bug == "wrong peephole (LSTM)":
        monkeypatch.setattr(
            onnx_graphs, "_lstm_params", _wrong_peephole_lstm(onnx_graphs._lstm_params)
        )
    elif bug == "wrong peephole (Scan)":
        monkeypatch.setattr(
            onnx_graphs, "_block_diag", _wrong_peephole_scan(onnx_graphs._block_diag)
        )
    elif bug == "dropped normalisation":
        monkeypatch.setattr(onnx_graphs, "_normalize_input", lambda g, norm: "x")
    else:
        real = onnx_graphs._row
        norm_rows = {id(v) for v in (NORM.target_std, NORM.target_mean)}
        monkeypatch.setattr(
            onnx_graphs,
            "_row",
            lambda v: (
                real([1.0] * len(v)) * (0 if v is NORM.target_mean else 1)
                if id(v) in norm_rows
                else real(v)
            ),
        )
    with pytest.raises(ExportMismatch) as info:
        _export(tmp_path, _model(**knobs))
    assert info.value.largest_error > 1e-3, "a bug errs far beyond rounding"
    assert "beyond the allowed" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_float32_drift_is_not_refused():
    """A chaotic network: over 1,000 steps float32 PyTorch and ONNX Runtime both leave the
    exact (float64) trajectory and each other by far more than 1e-5, equally: accepted."""
    config = PeepholeConfig(input_size=5, output_size=3, blocks=9, cells_per_block=2,
                            gate_to_gate=True, input_to_output=True, g="logistic4",
                            h="logistic4", output_activation="linear", init_range=1.0)  # fmt: skip
    torch.manual_seed(1)
    model = PeepholeLSTM(config).eval()
    graphs = build_graphs(model, internals=False)
    inputs = CheckInputs(data=[], low=-np.ones(5), high=np.ones(5), length=1000)
    report = verify(model, graphs, None, CheckRule(), inputs)
    assert report.float32_error["y"] > 1e-3  # PyTorch's own float32 drift
    sess = session(graphs["model"])
    apart = 0.0
    for _, feeds in cases(model, inputs):
        own = reference(model, feeds, None)["y"]
        apart = max(apart, error(sess.run(["y"], feeds)[0], own))
    assert apart > 1e-3  # a fixed 1e-5 against float32 PyTorch would refuse this export


def test_the_rule():
    rule = CheckRule(factor=100, floor=1e-5)
    assert rule.allowed(0.0) == 1e-5 and rule.allowed(1e-6) == pytest.approx(1.1e-4)
    f = Finding("model", "y", "case", 2e-4, 1e-6, rule.allowed(1e-6))
    assert f.share == pytest.approx(2e-4 / 1.1e-4)
    assert Finding("model", "y", "c", 0.0, 0.0, 0.0).share == 0.0
    assert Finding("model", "y", "c", 1e-9, 0.0, 0.0).share == float("inf")
    assert "100 x" in rule.describe() and "float64" in rule.describe()


def test_cases_cover_the_data_and_the_training_range():
    model = _model()
    got = list(cases(model, INPUTS))
    labels = [c for c, _ in got]
    assert labels[0].startswith("validation data 2x30")
    np.testing.assert_array_equal(got[0][1]["x"], INPUTS.data[0].astype(np.float32))
    xs = np.concatenate([f["x"].reshape(-1, 2) for c, f in got if c.startswith("random")])
    assert (xs.min(0) >= INPUTS.low - 1e-6).all() and (xs.max(0) <= INPUTS.high + 1e-6).all()
    lengths = {f["x"].shape[1] for _, f in got[1:]}
    assert lengths == {1, 7, 50}
    assert any(f["cell_states_in"].any() for _, f in got)  # random start states too


def test_the_card_records_rule_and_errors(tmp_path):
    model = _model()
    _export(tmp_path, model)
    import json

    v = json.loads((tmp_path / "m" / "1" / "model.json").read_text())["verification"]
    assert v["factor"] == 100 and v["floor"] == 1e-5 and "float64" in v["reference"]
    assert v["cases"][0].startswith("validation data: 2 x 30")
    assert set(v["max_error"]) == {"model", "internals", "cuda"}
    assert v["worst"]["share_of_allowed"] <= 1 and v["float32_module_error"]["y"] >= 0
    onnx.checker.check_model(onnx.load(tmp_path / "m" / "1" / "model.onnx"))
