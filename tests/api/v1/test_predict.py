"""Whole-sequence prediction: parity with PyTorch, exact ragged batches, state in and out,
internals, and every malformed input answered with its documented code."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.repo import LNSC, PLAIN, SIZES, RepoModels, reference

rng = np.random.default_rng(0)


def seqs(name: str, lengths: list[int]) -> list[np.ndarray]:
    return [rng.normal(size=(n, SIZES[name][0])).astype(np.float32) for n in lengths]


def predict(client: httpx.Client, name: str, body: dict, version: int | None = None) -> dict:
    path = f"/v1/models/{name}" + (f"/versions/{version}" if version else "") + "/predict"
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("name", [PLAIN, LNSC])
def test_predict_matches_pytorch(client: httpx.Client, models: RepoModels, name: str) -> None:
    xs = seqs(name, [40, 1, 17])
    out = predict(client, name, {"inputs": [x.tolist() for x in xs], "return_state": True})
    assert out["model"] == name
    for b, x in enumerate(xs):
        y, st = reference(models, name, x)
        np.testing.assert_allclose(out["outputs"][b], y, atol=1e-5, rtol=1e-5)
        for k, v in st.items():
            np.testing.assert_allclose(out["state"][b][k], v, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [PLAIN, LNSC])
def test_ragged_batch_is_exact(client: httpx.Client, name: str) -> None:
    """Each sequence of a ragged batch gets what it gets alone (no padding leaks in)."""
    xs = seqs(name, [5, 12, 1, 12, 7])
    batch = predict(client, name, {"inputs": [x.tolist() for x in xs], "return_state": True})
    for b, x in enumerate(xs):
        alone = predict(client, name, {"inputs": [x.tolist()], "return_state": True})
        np.testing.assert_allclose(batch["outputs"][b], alone["outputs"][0], atol=1e-6)
        assert len(batch["outputs"][b]) == len(x)
        for k in alone["state"][0]:
            np.testing.assert_allclose(batch["state"][b][k], alone["state"][0][k], atol=1e-6)


def test_last_step_only_and_versions(client: httpx.Client) -> None:
    x = seqs(PLAIN, [6, 3])
    full = predict(client, PLAIN, {"inputs": [s.tolist() for s in x]})
    last = predict(client, PLAIN, {"inputs": [s.tolist() for s in x], "return_sequences": False})
    assert "state" not in last
    for b in range(2):
        np.testing.assert_allclose(last["outputs"][b], full["outputs"][b][-1], atol=1e-6)
        assert len(last["outputs"][b]) == SIZES[PLAIN][1]
    v1 = predict(client, PLAIN, {"inputs": [x[0].tolist()]}, version=1)
    assert v1["version"] == 1 and full["version"] == 2
    assert not np.allclose(v1["outputs"][0], full["outputs"][0])  # different weights


@pytest.mark.parametrize("name", [PLAIN, LNSC])
def test_state_in_continues_a_sequence(client: httpx.Client, name: str) -> None:
    x = seqs(name, [30])[0]
    whole = predict(client, name, {"inputs": [x.tolist()], "return_state": True})
    first = predict(client, name, {"inputs": [x[:11].tolist()], "return_state": True})
    second = predict(
        client,
        name,
        {
            "inputs": [x[11:].tolist(), x[11:].tolist()],
            "state": first["state"] + [None],
            "return_state": True,
        },
    )
    np.testing.assert_allclose(second["outputs"][0], whole["outputs"][0][11:], atol=1e-5)
    for k in whole["state"][0]:
        np.testing.assert_allclose(second["state"][0][k], whole["state"][0][k], atol=1e-5)
    # null starts from zeros: the same as a fresh sequence
    fresh = predict(client, name, {"inputs": [x[11:].tolist()]})
    np.testing.assert_allclose(second["outputs"][1], fresh["outputs"][0], atol=1e-6)


def test_internals(client: httpx.Client, models: RepoModels) -> None:
    xs = seqs(LNSC, [9, 4])
    out = predict(
        client,
        LNSC,
        {"inputs": [x.tolist() for x in xs], "return_internals": True, "return_state": True},
    )
    for b, x in enumerate(xs):
        ints = out["internals"][b]
        assert np.asarray(ints["cell_states"]).shape == (len(x), 4)
        assert np.asarray(ints["cell_outputs"]).shape == (len(x), 4)
        for g in ("input", "forget", "output"):
            gate = np.asarray(ints["gates"][g])
            assert gate.shape == (len(x), 2) and (gate > 0).all() and (gate < 1).all()
        np.testing.assert_allclose(
            ints["cell_states"][-1], out["state"][b]["cell_states"], atol=1e-5
        )
        np.testing.assert_allclose(
            ints["cell_outputs"][-1], out["state"][b]["cell_outputs"], atol=1e-5
        )
        gates = np.asarray(out["state"][b]["gates"])  # [blocks, 3]: input, forget, output
        np.testing.assert_allclose(ints["gates"]["forget"][-1], gates[:, 1], atol=1e-5)


GOOD = [[0.1, 0.2], [0.3, 0.4]]
BAD_PREDICT = [
    # (raw body, expected status, why)
    (b'{"inputs": [[[NaN, 1]]]}', 422, "NaN"),
    (b'{"inputs": [[[Infinity, 1]]]}', 422, "Infinity"),
    (b'{"inputs": [[[-Infinity, 1]]]}', 422, "-Infinity"),
    (b'{"inputs": [[[1e999, 1]]]}', 422, "overflows a double"),
    (b'{"inputs": [[[1e39, 1]]]}', 422, "overflows float32"),
    (b'{"inputs": [[[true, 1]]]}', 422, "boolean"),
    (b'{"inputs": [[["1.5", 1]]]}', 422, "string"),
    (b'{"inputs": [[[null, 1]]]}', 422, "null"),
    (b'{"inputs": [[[[1], 1]]]}', 422, "too deep"),
    (b'{"inputs": [[1, 2]]}', 422, "too shallow"),
    (b'{"inputs": [1]}', 422, "a number as a sequence"),
    (b'{"inputs": 1}', 422, "not a list"),
    (b'{"inputs": [[[1, 2, 3]]]}', 422, "feature count"),
    (b'{"inputs": [[[1, 2], [1]]]}', 422, "ragged features"),
    (b'{"inputs": [[]]}', 422, "empty sequence"),
    (b'{"inputs": []}', 422, "empty batch"),
    (b"{}", 422, "no inputs"),
    (b"[]", 422, "not an object"),
    (b"", 422, "empty body"),
    (b'{"inputs": [[[1, 2]]]', 422, "truncated JSON"),
    (b'{"inputs": [[[1, 2]]], "extra": 1}', 422, "unknown field"),
    (b'{"inputs": [[[1, 2]]], "return_state": 1}', 422, "flag not a boolean"),
    (b'{"inputs": [[[1, 2]]], "return_sequences": "false"}', 422, "flag as a string"),
    (b'{"inputs": [[[1, 2]]], "state": {}}', 422, "state not a list"),
    (b'{"inputs": [[[1, 2]]], "state": [{}, {}]}', 422, "state count"),
    (b'{"inputs": [[[1, 2]]], "state": [{"cell_states": [0,0,0]}]}', 422, "state name missing"),
    (
        b'{"inputs": [[[1, 2]]], "state": [{"cell_states": [0,0], "cell_outputs": [0,0,0]}]}',
        422,
        "state shape",
    ),
    (
        b'{"inputs": [[[1, 2]]], "state": [{"cell_states": [0,0,true], "cell_outputs": [0,0,0]}]}',
        422,
        "state boolean",
    ),
    (
        b'{"inputs": [[[1, 2]]], "state": [{"cell_states": [0,0,0], "cell_outputs": [0,0,0], "x": 1}]}',
        422,
        "state extra name",
    ),
    (b'{"inputs": [[[1, 2]]], "return_internals": true}', 422, "no internals graph on plain v1"),
    (b'{"inputs": [[[1e38, -1e38]]]}', 200, "huge but finite: squashed by the gates"),
]


@pytest.mark.parametrize("body,status,why", BAD_PREDICT, ids=[b[2] for b in BAD_PREDICT])
def test_bad_predict_inputs(client: httpx.Client, body: bytes, status: int, why: str) -> None:
    r = client.post(
        f"/v1/models/{PLAIN}/versions/1/predict",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == status, (why, r.text)
    if status != 200:
        assert isinstance(r.json()["detail"], str) and r.json()["detail"]


def test_limits_batch_and_steps(client: httpx.Client, server) -> None:  # type: ignore[no-untyped-def]
    s = server.settings
    r = client.post(f"/v1/models/{PLAIN}/predict", json={"inputs": [GOOD] * (s.max_batch_size + 1)})
    assert r.status_code == 413, r.text
    r = client.post(f"/v1/models/{PLAIN}/predict", json={"inputs": [[[0, 0]] * (s.max_steps + 1)]})
    assert r.status_code == 413, r.text
    assert (
        client.post(
            f"/v1/models/{PLAIN}/predict", json={"inputs": [GOOD] * s.max_batch_size}
        ).status_code
        == 200
    )


def test_body_limit(client: httpx.Client, server) -> None:  # type: ignore[no-untyped-def]
    big = b'{"inputs": [[' + b",".join([b"[0.5, 0.5]"] * 40000) + b"]]}"
    assert len(big) > server.settings.max_body_bytes
    r = client.post(
        f"/v1/models/{PLAIN}/predict", content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "detail" in r.json()

    def chunks():  # no Content-Length: counted as it streams
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    r = client.post(
        f"/v1/models/{PLAIN}/predict",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and "detail" in r.json()
    with httpx.Client(base_url=server.url) as c2:  # the server still serves
        assert c2.get("/health/live").status_code == 200
