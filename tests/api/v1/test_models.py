"""Model listing and cards; broken versions in the repository are refused, the rest served."""

from __future__ import annotations

import httpx
import pytest

from tests.repo import LNSC, PLAIN


def test_list_models(client: httpx.Client) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    # bad-sha, bad-card, bad-graph and plain/3 (unreadable card) are refused; the rest served.
    assert set(models) == {PLAIN, LNSC}
    assert models[PLAIN] == {"name": PLAIN, "versions": [1, 2], "default_version": 2}
    assert models[LNSC]["versions"] == [1]


def test_model_card_default_and_version(client: httpx.Client) -> None:
    card = client.get(f"/v1/models/{PLAIN}").json()
    assert card["name"] == PLAIN and card["version"] == 2
    assert card["provider"] == "CPUExecutionProvider"
    assert card["input_size"] == 2 and card["output_size"] == 1
    assert [s["name"] for s in card["state"]] == ["cell_states", "cell_outputs"]
    assert client.get(f"/v1/models/{PLAIN}/versions/1").json()["version"] == 1
    lnsc = client.get(f"/v1/models/{LNSC}/versions/1").json()
    assert lnsc["architecture"]["cells_per_block"] == 2
    assert [s["name"] for s in lnsc["state"]] == ["cell_states", "cell_outputs", "gates"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/nope",
        "/v1/models/bad-sha",
        "/v1/models/bad-card",
        "/v1/models/bad-graph",
        f"/v1/models/{PLAIN}/versions/3",
        f"/v1/models/{PLAIN}/versions/0",
        f"/v1/models/{PLAIN}/versions/-1",
        f"/v1/models/{PLAIN}/versions/abc",
        f"/v1/models/{PLAIN}/versions/99999999999999999999999",
        "/v1/models/bad-sha/versions/1",
    ],
)
def test_unknown_models_are_404(client: httpx.Client, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert isinstance(r.json()["detail"], str)
    r = client.post(path + "/predict", json={"inputs": [[[0.0, 0.0]]]})
    assert r.status_code == 404


def test_unknown_route_and_method(client: httpx.Client) -> None:
    assert client.get("/v1/nothing").status_code == 404
    r = client.put("/v1/models")
    assert r.status_code == 405 and "detail" in r.json()
