"""The KServe v2 model repository extension through `tritonclient.http` (index, load, unload,
Triton's errors), and v2 sequences that keep their version across a new default and a drain."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from bench.reload import copy_with_wrong_sha
from tests.live import LiveServer, make_settings, wait_until_unloaded
from tests.repo import PLAIN, RepoModels, predict, repo_with

rng = np.random.default_rng(16)


@pytest.fixture()
def live(models: RepoModels, tmp_path: Path) -> Iterator[LiveServer]:
    repo = repo_with(models, tmp_path / "models", (PLAIN, 1))
    with LiveServer(make_settings(repo, model_control="explicit", drain_seconds=4.0)) as s:
        yield s


def triton(server: LiveServer) -> th.InferenceServerClient:
    return th.InferenceServerClient(url=server.url.removeprefix("http://"))


def index(t: th.InferenceServerClient) -> dict[str, dict]:
    return {f"{e['name']}/{e['version']}": e for e in t.get_model_repository_index()}


def test_tritonclient_index_load_unload(live: LiveServer, models: RepoModels) -> None:
    t = triton(live)
    repo = live.settings.model_repository
    assert "model_repository" in t.get_server_metadata()["extensions"]
    assert index(t) == {f"{PLAIN}/1": {"name": PLAIN, "version": "1", "state": "READY",
                                       "reason": ""}}  # fmt: skip
    shutil.copytree(models.repo / PLAIN / "2", repo / PLAIN / "2")
    assert index(t)[f"{PLAIN}/2"]["state"] == "UNAVAILABLE"
    assert not t.is_model_ready(PLAIN, "2")
    t.load_model(PLAIN)  # every version in the repository
    assert t.is_model_ready(PLAIN, "2") and t.get_model_metadata(PLAIN)["versions"] == ["1", "2"]
    with httpx.Client(base_url=live.url) as c:
        only = c.post("/v2/repository/index", json={"ready": True}).json()
        assert [e["version"] for e in only] == ["1", "2"]
        r = c.post(f"/v2/repository/models/{PLAIN}/unload", json={"parameters": {"version": "1"}})
        assert r.status_code == 200 and r.content == b""
    assert not t.is_model_ready(PLAIN, "1") and t.is_model_ready(PLAIN)
    assert index(t)[f"{PLAIN}/1"]["state"] == "UNAVAILABLE"  # no session: freed at once
    t.unload_model(PLAIN)
    assert not t.is_model_ready(PLAIN) and t.is_server_ready()
    t.load_model(PLAIN)
    assert t.is_model_ready(PLAIN, "1") and t.is_model_ready(PLAIN, "2")


def test_triton_errors(live: LiveServer, models: RepoModels) -> None:
    t = triton(live)
    repo = live.settings.model_repository
    copy_with_wrong_sha(models.repo / PLAIN / "1", repo / PLAIN / "3", 3)
    with pytest.raises(InferenceServerException) as e:
        t.load_model(PLAIN)
    assert e.value.status() == "400" and "version 3" in e.value.message()
    assert t.is_model_ready(PLAIN, "1") and not t.is_model_ready(PLAIN, "3")
    assert index(t)[f"{PLAIN}/3"]["state"] == "UNAVAILABLE" and "sha256" in index(t)[
        f"{PLAIN}/3"]["reason"]  # fmt: skip
    with pytest.raises(InferenceServerException) as e:
        t.load_model("nope")
    assert e.value.status() == "404"
    with pytest.raises(InferenceServerException) as e:
        t.load_model(PLAIN, config=json.dumps({"max_batch_size": 8}))
    assert e.value.status() == "400" and "config" in e.value.message()
    with httpx.Client(base_url=live.url) as c:
        for body in (b"[1]", b"{bad", json.dumps({"parameters": {"version": "x"}}).encode()):
            r = c.post(f"/v2/repository/models/{PLAIN}/load", content=body)
            assert r.status_code == 400 and set(r.json()) == {"error"}, body
        assert c.post("/v2/repository/index", json={"ready": "yes"}).status_code == 400


def test_not_explicit_is_unavailable(models: RepoModels) -> None:
    with LiveServer(make_settings(models.repo)) as s:
        t = triton(s)
        with pytest.raises(InferenceServerException) as e:
            t.unload_model(PLAIN)
        assert e.value.status() == "503" and "explicit" in e.value.message()
        assert index(t)[f"{PLAIN}/1"]["state"] == "READY"
        assert index(t)["bad-sha/1"]["state"] == "UNAVAILABLE"
    with LiveServer(make_settings(models.repo, api_keys="k")) as s, s.client() as c:
        assert c.post("/v2/repository/index").status_code == 401
        assert c.post(f"/v2/repository/models/{PLAIN}/load").status_code == 401
        assert (
            c.post("/v2/repository/index", headers={"Authorization": "Bearer k"}).status_code == 200
        )


def test_sequence_keeps_its_version(live: LiveServer, models: RepoModels) -> None:
    """A sequence started on the default keeps that version when a new default arrives and
    while its version drains; after the drain deadline it is 410, never another version."""
    t = triton(live)
    repo = live.settings.model_repository
    x = rng.normal(size=(12, 2)).astype(np.float32)
    with httpx.Client(base_url=live.url) as c:
        whole = np.asarray(predict(c, PLAIN, [x.tolist()], 1)["outputs"][0])

    def step(part: np.ndarray, **kw: object) -> th.InferResult:
        inp = th.InferInput("x", [1, *part.shape], "FP32")
        inp.set_data_from_numpy(part[None])
        return t.infer(PLAIN, [inp], sequence_id=55, **kw)

    ys = [step(x[:3], sequence_start=True)]
    shutil.copytree(models.repo / PLAIN / "2", repo / PLAIN / "2")
    t.load_model(PLAIN)  # version 2 is the default now
    ys.append(step(x[3:6]))
    with httpx.Client(base_url=live.url) as c:
        r = c.post(f"/v2/repository/models/{PLAIN}/unload", json={"parameters": {"version": 1}})
        assert r.status_code == 200
    assert not t.is_model_ready(PLAIN, "1")
    ys.append(step(x[6:9]))  # draining: the sequence still steps on version 1
    assert {y.get_response()["model_version"] for y in ys} == {"1"}
    got = np.concatenate([y.as_numpy("y")[0] for y in ys])
    np.testing.assert_allclose(got, whole[:9], atol=1e-5)
    wait_until_unloaded(live.url, PLAIN, 1)  # the drain deadline (4 s), and a check after it
    with pytest.raises(InferenceServerException) as e:
        step(x[9:])
    assert e.value.status() == "410" and "version 1" in e.value.message()
    # a new sequence under the same id starts on the default
    assert step(x[:2], sequence_start=True).get_response()["model_version"] == "2"
