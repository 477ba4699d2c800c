"""Model control on /v1 (explicit mode): the repository index, load and unload, drains that
keep sessions on their version, 410 after the deadline, migration, keys and the OpenAPI."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.reload import copy_with_card, copy_with_wrong_sha
from tests.live import LiveServer, make_settings, wait_until_unloaded
from tests.repo import LNSC, PLAIN, RepoModels, predict, repo_with

rng = np.random.default_rng(15)
KEY = {"Authorization": "Bearer ctl-key"}


def chunks(n: int, steps: int = 3) -> list[list[list[float]]]:
    return [rng.normal(size=(steps, 2)).astype(np.float32).tolist() for _ in range(n)]


# the drain of an unloaded version: long beside what a loaded box takes for the requests a
# test makes while it drains (they must all see it draining)
DRAIN = 6.0


def versions(c: httpx.Client, name: str = PLAIN) -> dict[int, dict]:
    body = c.get("/v1/repository", headers=KEY).json()
    entry = next((m for m in body["models"] if m["name"] == name), {"versions": []})
    return {v["version"]: v for v in entry["versions"]}


def metric(c: httpx.Client, name: str, **labels: str) -> float:
    total = 0.0
    for line in c.get("/metrics", headers=KEY).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture()
def explicit(models: RepoModels, tmp_path: Path) -> Iterator[tuple[LiveServer, httpx.Client]]:
    """Explicit mode on a fresh repository holding plain/1 (version 2 copied in later)."""
    repo = repo_with(models, tmp_path / "models", (PLAIN, 1))
    settings = make_settings(
        repo, model_control="explicit", drain_seconds=DRAIN, api_keys="ctl-key"
    )
    with LiveServer(settings) as s, httpx.Client(base_url=s.url, timeout=30, headers=KEY) as c:
        yield s, c


def test_load_makes_default_and_unload_frees(
    explicit: tuple[LiveServer, httpx.Client], models: RepoModels
) -> None:
    server, c = explicit
    repo = server.settings.model_repository
    assert versions(c) == {1: {"version": 1, "state": "ready"}}
    shutil.copytree(models.repo / PLAIN / "2", repo / PLAIN / "2")
    assert versions(c)[2]["state"] == "available"  # in the repository, not served yet
    assert (
        c.post(f"/v1/models/{PLAIN}/versions/2/predict", json={"inputs": [[[0, 0]]]}).status_code
        == 404
    )
    r = c.post(f"/v1/models/{PLAIN}/load", json={"version": 2})
    assert r.status_code == 200, r.text
    assert r.json()["default_version"] == 2 and r.json()["versions"][1]["state"] == "ready"
    x = chunks(1, 5)
    assert predict(c, PLAIN, x)["version"] == 2  # the highest ready version is the default
    assert c.get(f"/v1/models/{PLAIN}").json()["version"] == 2
    # the same files again: nothing changes
    assert c.post(f"/v1/models/{PLAIN}/load").status_code == 200
    # no session on version 2: unloading frees it at once, version 1 is the default again
    r = c.post(f"/v1/models/{PLAIN}/unload", json={"version": 2})
    assert r.status_code == 200 and r.json()["default_version"] == 1
    assert versions(c)[2]["state"] == "unloaded"
    assert predict(c, PLAIN, x)["version"] == 1
    assert c.get("/health/ready").json()["models"] == 1  # readiness counts what is loaded
    assert metric(c, "peephole_model_loads_total", model=PLAIN, version="2", result="loaded") == 1
    assert metric(c, "peephole_model_unloads_total", model=PLAIN, version="2", cause="api") == 1
    assert metric(c, "peephole_model_freed_total", model=PLAIN, version="2", end="idle") == 1
    # loaded again later: serves again
    assert c.post(f"/v1/models/{PLAIN}/load", json={"version": 2}).status_code == 200
    assert predict(c, PLAIN, x)["version"] == 2


def test_refused_load_keeps_serving(
    explicit: tuple[LiveServer, httpx.Client], models: RepoModels
) -> None:
    server, c = explicit
    repo = server.settings.model_repository
    copy_with_wrong_sha(models.repo / PLAIN / "2", repo / PLAIN / "4", 4)
    r = c.post(f"/v1/models/{PLAIN}/load", json={"version": 4})
    assert r.status_code == 422 and "version 4" in r.json()["detail"]
    assert "sha256" in r.json()["detail"]
    assert versions(c)[4]["state"] == "refused" and "sha256" in versions(c)[4]["reason"]
    assert metric(c, "peephole_model_loads_total", model=PLAIN, version="4", result="refused") == 1
    assert predict(c, PLAIN, chunks(1))["version"] == 1  # what served before keeps serving
    assert c.get("/health/ready").status_code == 200
    # errors of the routes themselves
    assert c.post("/v1/models/nope/load").status_code == 404
    assert c.post(f"/v1/models/{PLAIN}/load", json={"version": 7}).status_code == 404
    assert c.post("/v1/models/nope/unload").status_code == 404
    for body in ({"version": 0}, {"version": "2"}, {"version": True}, {"v": 1}, [1]):
        assert c.post(f"/v1/models/{PLAIN}/load", json=body).status_code == 422, body
    assert c.post(f"/v1/models/{PLAIN}/load", content=b"{oops").status_code == 422


def test_unload_drains_sessions_then_410(
    explicit: tuple[LiveServer, httpx.Client], models: RepoModels
) -> None:
    """A session on an unloaded version keeps stepping (exactly as before) until the drain
    deadline; then 410 with a readable detail, its state still readable, migratable."""
    server, c = explicit
    repo = server.settings.model_repository
    shutil.copytree(models.repo / PLAIN / "2", repo / PLAIN / "2")
    assert c.post(f"/v1/models/{PLAIN}/load", json={"version": 2}).status_code == 200
    xs = chunks(4)
    whole = np.asarray(predict(c, PLAIN, [sum(xs, [])], 1)["outputs"][0])
    sid = c.post("/v1/sessions", json={"model": PLAIN, "version": 1}).json()["session_id"]
    got = [c.post(f"/v1/sessions/{sid}/steps", json={"inputs": xs[0]}).json()["outputs"]]
    r = c.post(f"/v1/models/{PLAIN}/unload", json={"version": 1})
    assert r.status_code == 200
    v1 = versions(c)[1]
    assert v1["state"] == "draining" and "1 live session" in v1["reason"] and v1["drain_deadline"]
    # nothing new starts on a draining version; the default is the highest ready one
    r = c.post("/v1/sessions", json={"model": PLAIN, "version": 1})
    assert r.status_code == 404 and "draining" in r.json()["detail"]
    assert (
        c.post(f"/v1/models/{PLAIN}/versions/1/predict", json={"inputs": [[[0, 0]]]}).status_code
        == 404
    )
    assert c.post("/v1/sessions", json={"model": PLAIN}).json()["version"] == 2
    assert c.get("/health/ready").status_code == 200
    for x in xs[1:3]:
        r = c.post(f"/v1/sessions/{sid}/steps", json={"inputs": x})
        assert r.status_code == 200, r.text
        got.append(r.json()["outputs"])
    np.testing.assert_allclose(np.concatenate(got), whole[:9], atol=1e-5)  # still version 1
    wait_until_unloaded(server.url, PLAIN, 1, KEY)  # the drain deadline, and a check after it
    r = c.post(f"/v1/sessions/{sid}/steps", json={"inputs": xs[3]})
    assert r.status_code == 410 and "version 1" in r.json()["detail"]
    assert "migrate" in r.json()["detail"]
    assert c.post(f"/v1/sessions/{sid}/reset").status_code == 410
    state = c.get(f"/v1/sessions/{sid}/state").json()  # still there, never a wrong result
    assert state["offset"] == 9 and state["version"] == 1
    assert metric(c, "peephole_model_freed_total", model=PLAIN, version="1", end="deadline") == 1
    # migrate to version 2 (same state layout): steps go on from the same state and offset
    r = c.post(f"/v1/sessions/{sid}/migrate", json={"version": 2})
    assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["offset"] == 9
    stepped = c.post(f"/v1/sessions/{sid}/steps", json={"inputs": xs[3], "offset": 9}).json()
    expect = predict(c, PLAIN, [xs[3]], 2, state=[state["state"]])["outputs"][0]
    np.testing.assert_allclose(stepped["outputs"], expect, atol=1e-5)


def test_migrate_errors(explicit: tuple[LiveServer, httpx.Client], models: RepoModels) -> None:
    server, c = explicit
    repo = server.settings.model_repository
    # the lnsc network under plain's name: another state layout
    copy_with_card(models.repo / LNSC / "1", repo / PLAIN / "9", name=PLAIN, version=9)
    assert c.post(f"/v1/models/{PLAIN}/load", json={"version": 9}).status_code == 200
    sid = c.post("/v1/sessions", json={"model": PLAIN, "version": 1}).json()["session_id"]
    r = c.post(f"/v1/sessions/{sid}/migrate", json={"version": 9})
    assert r.status_code == 409 and "state" in r.json()["detail"]
    assert c.post(f"/v1/sessions/{sid}/migrate", json={"version": 5}).status_code == 404
    assert c.post(f"/v1/sessions/{'0' * 32}/migrate", json={"version": 1}).status_code == 404
    for body in ({}, {"version": "1"}, {"version": 0}, {"version": 1, "x": 1}):
        assert c.post(f"/v1/sessions/{sid}/migrate", json=body).status_code == 422, body
    r = c.post(f"/v1/sessions/{sid}/migrate", json={"version": 1})  # where it is: unchanged
    assert r.status_code == 200 and r.json()["version"] == 1


def test_keys_and_modes(models: RepoModels, explicit: tuple[LiveServer, httpx.Client]) -> None:
    server, c = explicit
    for method, path in (("GET", "/v1/repository"), ("POST", f"/v1/models/{PLAIN}/load"),
                         ("POST", f"/v1/models/{PLAIN}/unload"),
                         ("POST", f"/v1/sessions/{'0' * 32}/migrate")):  # fmt: skip
        r = httpx.request(method, server.url + path, json={})
        assert r.status_code == 401, path
    # outside explicit mode load and unload are refused; the index answers
    with LiveServer(make_settings(models.repo)) as s, s.client() as plain:
        r = plain.post(f"/v1/models/{PLAIN}/load")
        assert r.status_code == 409 and "explicit" in r.json()["detail"]
        assert plain.post(f"/v1/models/{PLAIN}/unload").status_code == 409
        body = plain.get("/v1/repository").json()
        assert body["mode"] == "none"
        states = {
            (m["name"], v["version"]): v["state"] for m in body["models"] for v in m["versions"]
        }
        assert states[(PLAIN, 1)] == "ready" and states[("bad-sha", 1)] == "refused"


def test_openapi_documents_model_control(explicit: tuple[LiveServer, httpx.Client]) -> None:
    _, c = explicit
    spec = c.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v1/repository", "/v1/models/{name}/load", "/v1/models/{name}/unload",
                 "/v1/sessions/{session_id}/migrate", "/v2/repository/index",
                 "/v2/repository/models/{name}/load", "/v2/repository/models/{name}/unload"):  # fmt: skip
        assert path in paths, path
    assert "410" in paths["/v1/sessions/{session_id}/steps"]["post"]["responses"]
    assert "409" in paths["/v1/sessions/{session_id}/migrate"]["post"]["responses"]
    assert re.search("drain", json.dumps(paths["/v1/models/{name}/unload"]))
