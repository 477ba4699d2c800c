"""The KServe v2 endpoints through `tritonclient.http`, the client users already have:
health, metadata, inference (JSON and binary tensors) equal to /v1 predict, output selection,
state tensors both ways, and sequences kept in the /v1 session store."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.repo import LNSC, PLAIN, SIZES

rng = np.random.default_rng(5)
STATES = {PLAIN: ["cell_states", "cell_outputs"], LNSC: ["cell_states", "cell_outputs", "gates"]}


def xs(name: str, batch: int, steps: int) -> np.ndarray:
    return rng.normal(size=(batch, steps, SIZES[name][0])).astype(np.float32)


def v1_predict(client: httpx.Client, name: str, x: np.ndarray, version: int | None = None) -> dict:
    path = f"/v1/models/{name}" + (f"/versions/{version}" if version else "") + "/predict"
    r = client.post(path, json={"inputs": x.tolist(), "return_state": True})
    assert r.status_code == 200, r.text
    return r.json()


def x_input(x: np.ndarray, binary: bool = True, name: str = "x") -> th.InferInput:
    i = th.InferInput(name, list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=binary)
    return i


def step(
    triton: th.InferenceServerClient, name: str, x: np.ndarray, seq: Any, **kw: Any
) -> th.InferResult:
    return triton.infer(name, [x_input(x[None])], sequence_id=seq, **kw)


def test_health_and_server_metadata(triton: th.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "peephole" and meta["version"]
    assert {"binary_tensor_data", "sequence"} <= set(meta["extensions"])
    assert triton.is_model_ready(PLAIN) and triton.is_model_ready(PLAIN, "1")
    assert triton.is_model_ready(LNSC, "1")
    assert not triton.is_model_ready("nope") and not triton.is_model_ready(PLAIN, "9")
    assert not triton.is_model_ready("bad-sha")  # refused versions are not served


def test_model_metadata(triton: th.InferenceServerClient) -> None:
    meta = triton.get_model_metadata(LNSC)
    assert meta["name"] == LNSC and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    ins = {t["name"]: t for t in meta["inputs"]}
    outs = {t["name"]: t for t in meta["outputs"]}
    assert ins["x"] == {"name": "x", "datatype": "FP32", "shape": [-1, -1, 3]}
    assert outs["y"] == {"name": "y", "datatype": "FP32", "shape": [-1, -1, 2]}
    assert outs["cell_states"]["shape"] == [-1, 4] and outs["gates"]["shape"] == [-1, 2, 3]
    assert set(ins) - {"x"} == set(outs) - {"y"} == set(STATES[LNSC])
    meta = triton.get_model_metadata(PLAIN, "1")
    assert meta["versions"] == ["1", "2"] and len(meta["inputs"]) == 3
    with pytest.raises(InferenceServerException) as e:
        triton.get_model_metadata(PLAIN, "7")
    assert e.value.status() == "404"


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("name", [PLAIN, LNSC])
def test_infer_equals_v1_predict(
    triton: th.InferenceServerClient, client: httpx.Client, name: str, binary: bool
) -> None:
    x = xs(name, 3, 9)
    outs = [th.InferRequestedOutput(n, binary_data=binary) for n in ["y", *STATES[name]]]
    r = triton.infer(name, [x_input(x, binary)], outputs=outs, request_id="req-1")
    resp = r.get_response()
    assert resp["model_name"] == name
    assert resp["model_version"] == ("2" if name == PLAIN else "1")
    assert resp["id"] == "req-1"
    ref = v1_predict(client, name, x)
    y = r.as_numpy("y")
    assert y.dtype == np.float32 and y.shape == (3, 9, SIZES[name][1])
    np.testing.assert_allclose(y, np.array(ref["outputs"]), atol=1e-6)
    for s in STATES[name]:
        want = np.array([st[s] for st in ref["state"]], np.float32)
        np.testing.assert_allclose(r.as_numpy(s), want, atol=1e-6)
    for out in resp["outputs"]:
        assert out["datatype"] == "FP32" and ("parameters" in out) == binary


def test_versions_and_default_outputs(
    triton: th.InferenceServerClient, client: httpx.Client
) -> None:
    """No `outputs`: every output comes back (binary, as tritonclient then asks)."""
    x = xs(PLAIN, 2, 4)
    r = triton.infer(PLAIN, [x_input(x, binary=False)], model_version="1")
    assert r.get_response()["model_version"] == "1"
    assert {o["name"] for o in r.get_response()["outputs"]} == {"y", *STATES[PLAIN]}
    np.testing.assert_allclose(
        r.as_numpy("y"), v1_predict(client, PLAIN, x, 1)["outputs"], atol=1e-6
    )


def test_output_selection(triton: th.InferenceServerClient) -> None:
    x = xs(LNSC, 1, 3)
    r = triton.infer(LNSC, [x_input(x)], outputs=[th.InferRequestedOutput("cell_states")])
    assert [o["name"] for o in r.get_response()["outputs"]] == ["cell_states"]
    assert r.as_numpy("y") is None and r.as_numpy("cell_states").shape == (1, 4)
    with pytest.raises(InferenceServerException) as e:
        triton.infer(LNSC, [x_input(x)], outputs=[th.InferRequestedOutput("z")])
    assert e.value.status() == "400" and "unknown output" in e.value.message()


def test_state_tensors_as_inputs(triton: th.InferenceServerClient, client: httpx.Client) -> None:
    """A stateless client carries the state itself: two halves equal the whole."""
    x = xs(LNSC, 2, 12)
    first = triton.infer(LNSC, [x_input(x[:, :5])])
    carried = [x_input(first.as_numpy(s), name=s) for s in STATES[LNSC]]
    second = triton.infer(LNSC, [x_input(x[:, 5:]), *carried])
    whole = v1_predict(client, LNSC, x)
    got = np.concatenate([first.as_numpy("y"), second.as_numpy("y")], axis=1)
    np.testing.assert_allclose(got, whole["outputs"], atol=1e-5)
    # a state input alone (others start at zeros) is accepted; a wrong shape is not
    triton.infer(LNSC, [x_input(x), carried[0]])
    with pytest.raises(InferenceServerException) as e:
        triton.infer(LNSC, [x_input(x), x_input(np.zeros((2, 3), np.float32), name="cell_states")])
    assert e.value.status() == "400"


@pytest.mark.parametrize("seq", [4242, "user-7:stream/a"])
def test_sequence_in_chunks_equals_whole(
    triton: th.InferenceServerClient, client: httpx.Client, seq: int | str
) -> None:
    x = xs(LNSC, 1, 30)[0]
    cuts = [0, 5, 6, 17, 29, 30]
    ys, last = [], None
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        last = step(triton, LNSC, x[a:b], seq, sequence_start=i == 0, sequence_end=b == len(x))
        ys.append(last.as_numpy("y")[0])
    whole = v1_predict(client, LNSC, x[None])
    np.testing.assert_allclose(np.concatenate(ys), whole["outputs"][0], atol=1e-5)
    assert last is not None
    for s in STATES[LNSC]:
        np.testing.assert_allclose(last.as_numpy(s)[0], whole["state"][0][s], atol=1e-5)


def test_unknown_sequence_is_an_error(triton: th.InferenceServerClient) -> None:
    for seq in (987654321, "never-started"):
        with pytest.raises(InferenceServerException) as e:
            step(triton, LNSC, xs(LNSC, 1, 2)[0], seq)
        assert e.value.status() == "400" and "sequence_start" in e.value.message()


def live_sessions(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("peephole_sessions_live "):
            return float(line.split()[1])
    raise AssertionError("no peephole_sessions_live in /metrics")


def test_sequence_end_frees_state(triton: th.InferenceServerClient, client: httpx.Client) -> None:
    x = xs(LNSC, 1, 4)[0]
    before = live_sessions(client)
    step(triton, LNSC, x, 77, sequence_start=True)
    assert live_sessions(client) == before + 1  # held in the same store as /v1 sessions
    step(triton, LNSC, x, 77, sequence_end=True)
    assert live_sessions(client) == before
    with pytest.raises(InferenceServerException) as e:
        step(triton, LNSC, x, 77)
    assert e.value.status() == "400"
    # start and end together: a one-request sequence, nothing kept
    one = step(triton, LNSC, x, 78, sequence_start=True, sequence_end=True)
    assert live_sessions(client) == before
    np.testing.assert_allclose(
        one.as_numpy("y")[0], v1_predict(client, LNSC, x[None])["outputs"][0], atol=1e-6
    )


def test_sequence_start_on_live_id_starts_over(triton: th.InferenceServerClient) -> None:
    a, b = xs(LNSC, 1, 3)[0], xs(LNSC, 1, 3)[0]
    first = step(triton, LNSC, a, "again", sequence_start=True).as_numpy("y")
    moved = step(triton, LNSC, b, "again").as_numpy("y")
    again = step(triton, LNSC, a, "again", sequence_start=True).as_numpy("y")
    np.testing.assert_allclose(again, first, atol=1e-7)
    np.testing.assert_allclose(
        step(triton, LNSC, b, "again", sequence_end=True).as_numpy("y"), moved, atol=1e-7
    )


def test_sequences_are_per_model_and_batch_one(triton: th.InferenceServerClient) -> None:
    step(triton, LNSC, xs(LNSC, 1, 2)[0], 5150, sequence_start=True)
    with pytest.raises(InferenceServerException) as e:  # same id, another model: not started
        step(triton, PLAIN, xs(PLAIN, 1, 2)[0], 5150)
    assert e.value.status() == "400"
    with pytest.raises(InferenceServerException) as e:
        triton.infer(LNSC, [x_input(xs(LNSC, 2, 2))], sequence_id=5150)
    assert e.value.status() == "400" and "batch 1" in e.value.message()
    step(triton, LNSC, xs(LNSC, 1, 2)[0], 5150, sequence_end=True)


def test_sequence_start_from_carried_state(
    triton: th.InferenceServerClient, client: httpx.Client
) -> None:
    """State inputs seed a sequence on its start (and are refused after it)."""
    x = xs(LNSC, 1, 10)
    first = triton.infer(LNSC, [x_input(x[:, :4])])
    carried = [x_input(first.as_numpy(s), name=s) for s in STATES[LNSC]]
    second = triton.infer(LNSC, [x_input(x[:, 4:7]), *carried], sequence_id=31, sequence_start=True)
    with pytest.raises(InferenceServerException) as e:
        triton.infer(LNSC, [x_input(x[:, 7:]), *carried], sequence_id=31)
    assert e.value.status() == "400" and "start" in e.value.message()
    third = step(triton, LNSC, x[0, 7:], 31, sequence_end=True)
    got = np.concatenate([r.as_numpy("y") for r in (first, second, third)], axis=1)
    np.testing.assert_allclose(got, v1_predict(client, LNSC, x)["outputs"], atol=1e-5)
