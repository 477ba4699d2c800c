"""The served dopamine model: graph vs the training kernel, the card, and a real server
streaming CS/US in chunks vs one whole-sequence predict."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from websockets.sync.client import connect

from app.inference.card import ModelCard
from app.inference.repository import load_version
from tests.live import LiveServer, make_settings
from training.lnsc.export import NAME, reference, to_module
from training.lnsc.nets import Nets
from training.lnsc.network import Dims
from training.lnsc.protocol import probe_block, stack, training_block

SHIPPED = Path(__file__).resolve().parents[2] / "models" / NAME / "1"


@pytest.fixture(scope="module")
def trained(rivest: tuple[Path, Nets]) -> tuple[Path, Nets]:
    """One network after a few online blocks (weights and critic off their init), exported
    (tests/conftest.py: the same one the /ui page serves)."""
    return rivest


def test_export_checks_against_the_reference(trained: tuple[Path, Nets]) -> None:
    path, _ = trained
    card = json.loads((path / "model.json").read_text())
    errors = card["verification"]["max_error"]
    assert set(errors) == {"model", "internals"}
    assert max(max(v.values()) for v in errors.values()) < 2e-5
    assert card["output_names"] == ["us", "value", "td_error"]
    assert card["input_names"] == ["cs", "us"]
    names = [s["name"] for s in card["state"]]
    assert names == [
        "cell_states",
        "cell_outputs",
        "critic_prev_output",
        "critic_prev_value",
        "critic_started",
    ]
    load_version(path, NAME, 1)  # the server's own checks accept it


def test_module_mapping_equals_the_kernel_forward(trained: tuple[Path, Nets]) -> None:
    import torch

    _, nets = trained
    block = training_block(np.random.default_rng(5))
    feeds = {"x": block.x[None].astype(np.float32)}
    for name, width in (("cell_states_in", 4), ("cell_outputs_in", 4)):
        feeds[name] = np.zeros((1, width), np.float32)
    for name in ("critic_prev_output_in", "critic_prev_value_in", "critic_started_in"):
        feeds[name] = np.zeros((1, 1), np.float32)
    ref = reference(nets.dims, nets.theta[0], nets.w_critic[0], 0.98, feeds)
    module = to_module(nets.dims, nets.theta[0]).double()
    with torch.no_grad():
        y, state = module(torch.from_numpy(block.x[None]))
    np.testing.assert_allclose(y[0, :, 0].numpy(), ref["y"][0, :, 0], atol=1e-12)
    np.testing.assert_allclose(state["cell_states"].numpy(), ref["cell_states_out"], atol=1e-12)


def test_card_critic_is_checked() -> None:
    card = json.loads((SHIPPED / "model.json").read_text()) if SHIPPED.exists() else None
    if card is None:
        pytest.fail("models/rivest2010/1 is missing")
    ModelCard.model_validate(card)
    bad = json.loads(json.dumps(card))
    bad["output_names"] = ["us", "td_error", "value"]
    with pytest.raises(ValidationError, match="critic's outputs"):
        ModelCard.model_validate(bad)
    bad = json.loads(json.dumps(card))
    bad["critic"]["weights"] = bad["critic"]["weights"][:-1]
    with pytest.raises(ValidationError, match="2 \\+ cells"):
        ModelCard.model_validate(bad)
    plain = json.loads(json.dumps(card))
    del plain["critic"]
    with pytest.raises(ValidationError, match="sizes disagree"):
        ModelCard.model_validate(plain)


def test_shipped_model_equals_the_reference_with_its_recorded_weights() -> None:
    """models/rivest2010/1 holds the weights its card records; its graph agrees with them."""
    import onnxruntime as ort

    card = json.loads((SHIPPED / "model.json").read_text())
    theta = np.array(card["training"]["weights"]["theta"])
    w = np.array(card["critic"]["weights"])
    assert card["training"]["metrics"]["kept"] is True
    sess = ort.InferenceSession(str(SHIPPED / "model.onnx"), providers=["CPUExecutionProvider"])
    blocks = [training_block(np.random.default_rng(9)), probe_block(np.random.default_rng(9))]
    x, _, _ = stack(blocks)
    feeds = {"x": x.astype(np.float32)}
    for st in card["state"]:
        feeds[st["input"]] = np.zeros((2, *st["shape"]), np.float32)
    y = sess.run(["y"], feeds)[0]
    ref = reference(Dims(), theta, w, card["critic"]["gamma"], feeds)["y"]
    for i, b in enumerate(blocks):
        np.testing.assert_allclose(y[i, : b.steps], ref[i, : b.steps], atol=2e-5)
    # a trained network: the US is predicted one step ahead in normal trials
    b = blocks[0]
    o_before_us = y[0, b.onsets[:-1] + 4, 0]
    assert (o_before_us > 0.5).mean() > 0.8


@pytest.fixture(scope="module")
def server(trained: tuple[Path, Nets]) -> Iterator[LiveServer]:
    path, _ = trained
    with LiveServer(make_settings(path.parent.parent, max_steps=5000)) as s:
        yield s


def test_streamed_dopamine_equals_whole_predict(
    server: LiveServer, trained: tuple[Path, Nets]
) -> None:
    _, nets = trained
    block = probe_block(np.random.default_rng(3))
    x = block.x.tolist()
    with server.client() as c:
        whole = c.post(f"/v1/models/{NAME}/predict", json={"inputs": [x]}).json()["outputs"][0]
        sid = c.post("/v1/sessions", json={"model": NAME}).json()["session_id"]
        rng = np.random.default_rng(4)
        outs, t = [], 0
        with connect(f"{server.ws_url}/v1/sessions/{sid}/stream") as ws:
            while t < len(x):
                n = int(rng.integers(1, 12))
                ws.send(json.dumps({"inputs": x[t : t + n], "offset": t}))
                r = json.loads(ws.recv(timeout=10))
                assert "outputs" in r, r
                outs.extend(r["outputs"])
                t = min(len(x), t + n)
        state = c.get(f"/v1/sessions/{sid}/state").json()
    whole, outs = np.array(whole), np.array(outs)
    assert whole.shape == (block.steps, 3)
    np.testing.assert_allclose(outs, whole, atol=1e-6)
    assert whole[0, 2] == 0.0  # delta = 0 on the session's first step
    # the reference: the same frozen network and critic
    feeds = {"x": block.x[None].astype(np.float32)}
    for name, width in (
        ("cell_states_in", 4),
        ("cell_outputs_in", 4),
        ("critic_prev_output_in", 1),
        ("critic_prev_value_in", 1),
        ("critic_started_in", 1),
    ):
        feeds[name] = np.zeros((1, width), np.float32)
    ref = reference(
        nets.dims,
        nets.theta[0].astype(np.float32),
        nets.w_critic[0].astype(np.float32),
        0.98,
        feeds,
    )
    np.testing.assert_allclose(whole, ref["y"][0], atol=2e-5)
    assert np.abs(whole[:, 2]).max() > 0.1  # the US bursts show in delta
    st = state["state"]
    assert st["critic_started"] == [1.0]
    assert st["critic_prev_value"][0] == pytest.approx(whole[-1, 1], abs=1e-6)
    assert st["critic_prev_output"][0] == pytest.approx(whole[-1, 0], abs=1e-6)


def test_restored_session_continues_the_dopamine_signal(server: LiveServer) -> None:
    """The carried o(t-1), V(t-1) and flag: a session restored mid-block goes on exactly."""
    x = training_block(np.random.default_rng(8)).x[:300].tolist()
    half = 137
    with server.client() as c:
        whole = np.array(
            c.post(f"/v1/models/{NAME}/predict", json={"inputs": [x]}).json()["outputs"][0]
        )
        sid = c.post("/v1/sessions", json={"model": NAME}).json()["session_id"]
        c.post(f"/v1/sessions/{sid}/steps", json={"inputs": x[:half]}).raise_for_status()
        state = c.get(f"/v1/sessions/{sid}/state").json()["state"]
        r = c.post("/v1/sessions", json={"model": NAME, "state": state, "offset": half})
        assert r.status_code == 201, r.text
        sid2 = r.json()["session_id"]
        rest = c.post(
            f"/v1/sessions/{sid2}/steps", json={"inputs": x[half:], "offset": half}
        ).json()
    np.testing.assert_allclose(np.array(rest["outputs"]), whole[half:], atol=1e-6)
    assert rest["outputs"][0][2] != 0.0 or whole[half, 2] == 0.0  # not restarted as a block
