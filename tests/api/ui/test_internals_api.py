"""What the page plots, checked at the API: `return_internals` on predict, steps and the
WebSocket equals the PyTorch module's own internals (`PeepholeLSTM.forward(x,
return_internals=True)`), and asking for internals does not change the outputs.

Uses the service tests' repository (plain topology with normalisation; lnsc 2 x 2 with
gate-to-gate and gate-to-output) and a server of its own.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from websockets.sync.client import connect

from tests.live import LiveServer, make_settings
from tests.repo import LNSC, PLAIN, PLAIN_NORM, SIZES, RepoModels, new_session

rng = np.random.default_rng(8)
GATES = ("input", "forget", "output")


@pytest.fixture(scope="module")
def api(models: RepoModels) -> Iterator[LiveServer]:
    with LiveServer(make_settings(models.repo)) as s:
        yield s


@pytest.fixture()
def client(api: LiveServer) -> Iterator[httpx.Client]:
    with api.client() as c:
        yield c


def torch_internals(
    models: RepoModels, name: str, x: np.ndarray, state: dict[str, Any] | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The module itself (float64) on one sequence [T, I] in raw units: y [T, O] and the
    internals in the API's layout."""
    module = copy.deepcopy(models.modules[name]).double()
    xt = torch.tensor(x, dtype=torch.float64)[None]
    if name == PLAIN:  # v2 bakes this normalisation into its graphs
        xt = (xt - torch.tensor(PLAIN_NORM["input_mean"])) / torch.tensor(PLAIN_NORM["input_std"])
    st = (
        None
        if state is None
        else {k: torch.tensor(np.asarray(v, np.float64))[None] for k, v in state.items()}
    )
    with torch.no_grad():
        y, _, ints = module(xt, st, return_internals=True)
    if name == PLAIN:
        y = y * PLAIN_NORM["target_std"] + PLAIN_NORM["target_mean"]
    gates = ints["gates"][0].numpy()  # [T, blocks, 3]: input, forget, output
    return y[0].numpy(), {
        "cell_states": ints["cell_states"][0].numpy(),
        "cell_outputs": ints["cell_outputs"][0].numpy(),
        "gates": {g: gates[:, :, i] for i, g in enumerate(GATES)},
    }


def assert_internals(got: dict[str, Any], want: dict[str, Any], atol: float = 1e-5) -> None:
    for k in ("cell_states", "cell_outputs"):
        np.testing.assert_allclose(np.asarray(got[k]), want[k], atol=atol, rtol=0, err_msg=k)
    assert set(got["gates"]) == set(GATES)
    for g in GATES:
        np.testing.assert_allclose(
            np.asarray(got["gates"][g]), want["gates"][g], atol=atol, rtol=0, err_msg=g
        )


def random_state(name: str, models: RepoModels) -> dict[str, Any]:
    cfg = models.modules[name].config
    cells = cfg.blocks * cfg.cells_per_block
    state: dict[str, Any] = {
        "cell_states": rng.normal(size=cells).tolist(),
        "cell_outputs": rng.uniform(-0.5, 0.5, size=cells).tolist(),
    }
    if cfg.gate_to_gate:
        state["gates"] = rng.uniform(0, 1, size=(cfg.blocks, 3)).tolist()
    return state


@pytest.mark.parametrize("name", [PLAIN, LNSC])
def test_predict_internals_equal_the_module(
    client: httpx.Client, models: RepoModels, name: str
) -> None:
    n_in = SIZES[name][0]
    xs = [rng.normal(size=(t, n_in)).astype(np.float32) for t in (40, 7, 1)]
    start = random_state(name, models)
    body = {
        "inputs": [x.tolist() for x in xs],
        "return_internals": True,
        "state": [None, start, None],
    }
    r = client.post(f"/v1/models/{name}/predict", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    for b, x in enumerate(xs):
        y, want = torch_internals(models, name, x.astype(np.float64), start if b == 1 else None)
        np.testing.assert_allclose(out["outputs"][b], y, atol=1e-5, rtol=0)
        assert_internals(out["internals"][b], want)


@pytest.mark.parametrize("name", [PLAIN, LNSC])
def test_outputs_do_not_depend_on_asking_for_internals(client: httpx.Client, name: str) -> None:
    """lnsc: both graphs are the same Scan, so the outputs are bit for bit the same. Plain:
    the lean graph is the ONNX LSTM operator and the internals graph a Scan of plain
    operators, so float32 rounding may differ in the last bits (measured ~3e-7 on values ~3)."""
    n_in = SIZES[name][0]
    xs = [rng.normal(size=(t, n_in)).astype(np.float32).tolist() for t in (60, 13)]
    plain = client.post(
        f"/v1/models/{name}/predict", json={"inputs": xs, "return_state": True}
    ).json()
    inner = client.post(
        f"/v1/models/{name}/predict",
        json={"inputs": xs, "return_state": True, "return_internals": True},
    ).json()
    assert "internals" not in plain and len(inner["internals"]) == 2
    for b in range(2):
        if name == LNSC:
            assert inner["outputs"][b] == plain["outputs"][b]
        np.testing.assert_allclose(inner["outputs"][b], plain["outputs"][b], atol=1e-6, rtol=1e-6)
        for k, v in plain["state"][b].items():
            np.testing.assert_allclose(inner["state"][b][k], v, atol=1e-6, rtol=0)
    # sessions: a chunk with internals and one without leave the same state and outputs
    a, b2 = new_session(client, name), new_session(client, name)
    ra = client.post(
        f"/v1/sessions/{a}/steps", json={"inputs": xs[1], "return_internals": True}
    ).json()
    rb = client.post(f"/v1/sessions/{b2}/steps", json={"inputs": xs[1]}).json()
    np.testing.assert_allclose(ra["outputs"], rb["outputs"], atol=1e-6, rtol=0)
    sa = client.get(f"/v1/sessions/{a}/state").json()["state"]
    sb = client.get(f"/v1/sessions/{b2}/state").json()["state"]
    for k in sa:
        np.testing.assert_allclose(sa[k], sb[k], atol=1e-6, rtol=0)


def test_websocket_internals_equal_the_module(
    api: LiveServer, client: httpx.Client, models: RepoModels
) -> None:
    """The page's live mode: one step per message with return_internals."""
    x = rng.normal(size=(25, SIZES[LNSC][0])).astype(np.float32)
    y, want = torch_internals(models, LNSC, x.astype(np.float64))
    sid = new_session(client, LNSC)
    got: dict[str, Any] = {"cell_states": [], "cell_outputs": [], "gates": {g: [] for g in GATES}}
    outputs = []
    with connect(f"{api.ws_url}/v1/sessions/{sid}/stream") as ws:
        for t in range(len(x)):
            ws.send(json.dumps({"inputs": [x[t].tolist()], "offset": t, "return_internals": True}))
            r = json.loads(ws.recv(timeout=10))
            assert r["offset"] == t + 1, r
            outputs.extend(r["outputs"])
            ints = r["internals"]
            assert len(ints["cell_states"]) == 1
            got["cell_states"].extend(ints["cell_states"])
            got["cell_outputs"].extend(ints["cell_outputs"])
            for g in GATES:
                got["gates"][g].extend(ints["gates"][g])
        # without the flag: no internals in the answer
        ws.send(json.dumps({"inputs": [x[0].tolist()]}))
        assert "internals" not in json.loads(ws.recv(timeout=10))
    np.testing.assert_allclose(outputs, y, atol=1e-5, rtol=0)
    assert_internals(got, want)


def test_no_internals_graph_is_a_clear_422(client: httpx.Client) -> None:
    r = client.post(
        f"/v1/models/{PLAIN}/versions/1/predict",
        json={"inputs": [[[0.0, 0.0]]], "return_internals": True},
    )
    assert r.status_code == 422 and "internals" in r.json()["detail"]
    card = client.get(f"/v1/models/{PLAIN}/versions/1").json()
    assert card["onnx"]["internals"] is None  # what the page reads to offer cells and gates
    assert client.get(f"/v1/models/{PLAIN}/versions/2").json()["onnx"]["internals"]["file"]
