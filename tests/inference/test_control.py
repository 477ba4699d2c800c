"""Poll mode: the repository is re-read while serving. A version copied in is never served
half-written nor refused for good, a bad one is refused (log line, metric) and retried when
its files change, a removed one drains, a changed one is swapped or drains, the default is
always the highest ready version."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.reload import copy_with_card, copy_with_wrong_sha, wait_for
from tests.live import LiveServer, make_settings
from tests.repo import PLAIN, RepoModels, predict, repo_with

POLL = 0.1
rng = np.random.default_rng(17)


def state(c: httpx.Client, version: int) -> dict:
    for m in c.get("/v1/repository").json()["models"]:
        if m["name"] == PLAIN:
            return next((v for v in m["versions"] if v["version"] == version), {})
    return {}


def loads(c: httpx.Client, version: int, result: str) -> float:
    labels = f'model="{PLAIN}",result="{result}",version="{version}"'
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(f"peephole_model_loads_total{{{labels}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture()
def polled(models: RepoModels, tmp_path: Path) -> Iterator[tuple[LiveServer, httpx.Client]]:
    repo = repo_with(models, tmp_path / "models", (PLAIN, 1))
    # a drain long beside a loaded box's pauses: the steps made while it drains must see it
    settings = make_settings(repo, model_control="poll", model_poll_seconds=POLL, drain_seconds=3)
    with LiveServer(settings) as s, s.client() as c:
        yield s, c


def test_half_written_then_bad_then_fixed(
    polled: tuple[LiveServer, httpx.Client], models: RepoModels, caplog: pytest.LogCaptureFixture
) -> None:
    server, c = polled
    repo = server.settings.model_repository
    x = rng.normal(size=(1, 6, 2)).astype(np.float32).tolist()
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # which version answers, all along
        with server.client() as w:
            while not stop.is_set():
                seen.append(predict(w, PLAIN, x)["version"])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # half the graph, held still until the server has tried it: refused, never served
        src, dst = models.repo / PLAIN / "2", repo / PLAIN / "2"
        graph = (src / "model.onnx").read_bytes()
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.onnx"))
        with open(dst / "model.onnx", "wb") as out:
            out.write(graph[: len(graph) // 2])
            out.flush()
            wait_for("the half graph refused", lambda: loads(c, 2, "refused") >= 1, 30)
            out.write(graph[len(graph) // 2 :])
        whole = time.time()
        wait_for("version 2", lambda: c.get(f"/v1/models/{PLAIN}").json()["version"] == 2, 30)
        first_v2 = time.time()
        # the watcher's request may have started before the switch (a starved thread on a
        # loaded box): it goes on until it has seen version 2 answer too
        wait_for("version 2 seen by the watcher", lambda: seen and seen[-1] == 2, 30)
    finally:
        stop.set()
        watcher.join()
    assert first_v2 >= whole
    assert loads(c, 2, "refused") >= 1 and loads(c, 2, "loaded") == 1  # retried once whole
    assert seen[0] == 1 and set(seen) <= {1, 2} and seen[-1] == 2
    assert sorted(seen) == seen  # the default moved once, forward
    # a version whose sha256 is wrong: refused with a log line and a metric, 2 keeps serving
    onnx = json.loads((repo / PLAIN / "2" / "model.json").read_text())["onnx"]
    copy_with_wrong_sha(repo / PLAIN / "2", repo / PLAIN / "3", 3)
    wait_for("version 3 refused", lambda: state(c, 3).get("state") == "refused", 30)
    assert "sha256" in state(c, 3)["reason"]
    assert any("refusing model plain/3" in r.getMessage() for r in caplog.records)
    time.sleep(5 * POLL)
    assert loads(c, 3, "refused") == 1  # refused once: not retried while its files hold still
    assert c.get(f"/v1/models/{PLAIN}").json()["version"] == 2
    # its card fixed: tried again, serves, and is the default
    card = json.loads((repo / PLAIN / "3" / "model.json").read_text())
    card["onnx"] = onnx
    (repo / PLAIN / "3" / "model.json").write_text(json.dumps(card))
    wait_for("version 3", lambda: c.get(f"/v1/models/{PLAIN}").json()["version"] == 3, 30)
    # removed with no session on it: freed, the default falls back
    shutil.rmtree(repo / PLAIN / "3")
    wait_for("version 3 gone", lambda: c.get(f"/v1/models/{PLAIN}").json()["version"] == 2, 30)
    assert state(c, 3)["state"] == "unloaded"
    assert c.get("/health/ready").json()["models"] == 2


def test_removed_version_drains_its_sessions(polled: tuple[LiveServer, httpx.Client]) -> None:
    server, c = polled
    repo = server.settings.model_repository
    xs = [rng.normal(size=(2, 2)).astype(np.float32).tolist() for _ in range(3)]
    whole = predict(c, PLAIN, [sum(xs, [])])["outputs"][0]
    sid = c.post("/v1/sessions", json={"model": PLAIN}).json()["session_id"]
    out = [c.post(f"/v1/sessions/{sid}/steps", json={"inputs": xs[0]}).json()["outputs"]]
    shutil.rmtree(repo / PLAIN / "1")  # the files go; the loaded engine drains
    wait_for("draining", lambda: state(c, 1).get("state") == "draining", 30)
    assert c.get(f"/v1/models/{PLAIN}").status_code == 404  # nothing ready to start on
    out.append(c.post(f"/v1/sessions/{sid}/steps", json={"inputs": xs[1]}).json()["outputs"])
    np.testing.assert_allclose(np.concatenate(out), np.asarray(whole)[:4], atol=1e-5)
    wait_for("freed", lambda: state(c, 1).get("state") == "unloaded", 30)
    assert c.post(f"/v1/sessions/{sid}/steps", json={"inputs": xs[2]}).status_code == 410
    assert c.get("/health/ready").status_code == 200  # readiness: the store answers


def test_changed_files(polled: tuple[LiveServer, httpx.Client], models: RepoModels) -> None:
    """Other files under a served number: swapped at once with no session on it; with a live
    session the old files drain and the new ones wait for it to end."""
    server, c = polled
    repo = server.settings.model_repository
    x = rng.normal(size=(1, 4, 2)).astype(np.float32).tolist()
    y1 = predict(c, PLAIN, x)["outputs"]
    sid = c.post("/v1/sessions", json={"model": PLAIN}).json()["session_id"]
    shutil.rmtree(repo / PLAIN / "1")
    copy_with_card(models.repo / PLAIN / "2", repo / PLAIN / "1", version=1)  # v2's weights
    wait_for("draining", lambda: state(c, 1).get("state") == "draining", 30)
    assert "1 live session" in state(c, 1)["reason"]
    # the session keeps the old files' results while the new files wait
    assert c.post(f"/v1/sessions/{sid}/steps", json={"inputs": x[0]}).json()["outputs"] == y1[0]
    c.delete(f"/v1/sessions/{sid}")  # its last session ends: the drain is over
    wait_for("new files", lambda: state(c, 1).get("state") == "ready", 30)
    y2 = predict(c, PLAIN, x)["outputs"]
    assert not np.allclose(y1, y2)
    np.testing.assert_allclose(y2, predict(c, PLAIN, x)["outputs"], atol=0)
    # no session on it: the next change swaps in one step, version 1 never stops serving
    shutil.rmtree(repo / PLAIN / "1")
    shutil.copytree(models.repo / PLAIN / "1", repo / PLAIN / "1")
    deadline = time.monotonic() + 30
    while predict(c, PLAIN, x)["outputs"] != y1:  # predict asserts 200 every time
        assert time.monotonic() < deadline


def test_explicit_mode_runs_one_worker(models: RepoModels) -> None:
    """A load or unload reaches one process: explicit mode never starts several workers."""
    assert make_settings(models.repo, model_control="explicit").worker_processes == 1
    with pytest.raises(ValueError, match="one worker process"):
        make_settings(models.repo, model_control="explicit", workers=2)
    poll = make_settings(models.repo, model_control="poll", workers=2, session_store="lmdb")
    assert poll.worker_processes == 2
