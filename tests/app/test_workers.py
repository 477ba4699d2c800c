"""`python -m app` with several worker processes: sessions shared by all workers (the lmdb
store), concurrent steps exactly once, the coalescing HTTP protocol, and clean exits."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from tests.app.server import App
from tests.repo import LNSC, RepoModels


def shared(repo: Path, workers: int, *args: str, **env: str) -> App:
    return App(repo, "--workers", str(workers), "--session-store", "lmdb", *args, **env)


@pytest.fixture(scope="module")
def two(models: RepoModels) -> Iterator[App]:
    app = shared(models.repo, 2)
    yield app
    out = app.stop()
    assert not _store(out).exists(), "SIGTERM left the private session store behind"
    assert not _metrics_dir(out).exists(), "SIGTERM left the private metrics files behind"


def test_two_workers_share_sessions(two: App, models: RepoModels) -> None:
    assert len(two.workers()) == 2
    with httpx.Client(base_url=two.url) as c:
        ids = [c.post("/v1/sessions", json={"model": LNSC}).json()["session_id"] for _ in range(6)]
    x = [0.3, -0.2, 0.5]

    def step(k: int) -> None:
        # a fresh connection each time, so the kernel spreads them over both workers
        r = httpx.post(f"{two.url}/v1/sessions/{ids[k % 6]}/steps", json={"inputs": [x]})
        assert r.status_code == 200, r.text

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(step, range(240)))
    with httpx.Client(base_url=two.url) as c:
        whole = c.post(f"/v1/models/{LNSC}/predict",
                       json={"inputs": [[x] * 40], "return_state": True}).json()  # fmt: skip
        for sid in ids:
            st = c.get(f"/v1/sessions/{sid}/state").json()
            assert st["offset"] == 40  # every step applied exactly once
            for name, value in whole["state"][0].items():
                np.testing.assert_allclose(st["state"][name], value, atol=1e-5)
        text = c.get("/metrics").text
    assert "peephole_session_store_conflicts_total" in text


def test_offsets_and_retries_across_workers(two: App) -> None:
    sid = httpx.post(f"{two.url}/v1/sessions", json={"model": LNSC}).json()["session_id"]
    body = {"inputs": [[0.1, 0.2, 0.3]], "offset": 0}
    first = [httpx.post(f"{two.url}/v1/sessions/{sid}/steps", json=body) for _ in range(6)]
    assert {r.status_code for r in first} == {200}
    assert len({json.dumps(r.json()) for r in first}) == 1  # retries: the same answer
    r = httpx.post(f"{two.url}/v1/sessions/{sid}/steps", json={**body, "offset": 7})
    assert r.status_code == 409 and r.json()["offset"] == 1


def test_keep_alive_websocket_and_413_through_the_coalescing_protocol(two: App) -> None:
    with httpx.Client(base_url=two.url) as c:
        sid = c.post("/v1/sessions", json={"model": LNSC}).json()["session_id"]
        for k in range(20):  # one connection, many requests
            r = c.post(f"/v1/sessions/{sid}/steps", json={"inputs": [[0.0, 0.0, 0.0]]})
            assert r.json()["offset"] == k + 1
        r = c.post(f"/v1/models/{LNSC}/predict", content=b"x" * (17 * 1024 * 1024),
                   headers={"content-type": "application/json"})  # fmt: skip
        assert r.status_code == 413
    with connect(f"ws://127.0.0.1:{two.port}/v1/sessions/{sid}/stream") as ws:
        for k in range(5):
            ws.send(json.dumps({"inputs": [[0.0, 0.0, 0.0]]}))
            assert json.loads(ws.recv(timeout=10))["offset"] == 21 + k


LIVE = 'peephole_requests_total{method="GET",route="/health/live",status="200"} '


def _live_count(url: str) -> float:
    """/health/live calls counted by one scrape (a fresh connection: any worker answers)."""
    text = httpx.get(f"{url}/metrics").text
    return next((float(ln[len(LIVE) :]) for ln in text.splitlines() if ln.startswith(LIVE)), 0.0)


def _hit_live(url: str, n: int) -> None:
    """n calls, each on a fresh connection, so that the kernel spreads them over the workers."""
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: httpx.get(f"{url}/health/live").status_code, range(n)))
    assert set(codes) == {200}


def test_metrics_add_up_every_workers_counts(two: App) -> None:
    """Each scrape, whichever worker answers it, counts every worker's requests: before,
    a scrape gave the answering worker's own counts and counters jumped between them."""
    before = _live_count(two.url)
    _hit_live(two.url, 120)
    assert {_live_count(two.url) for _ in range(12)} == {before + 120}


def test_an_operators_metrics_directory_is_used_and_kept(
    models: RepoModels, tmp_path: Path
) -> None:
    """PROMETHEUS_MULTIPROC_DIR set: the workers write their values there (one file set per
    worker process) and it is kept at exit."""
    shared_dir = tmp_path / "metrics"
    shared_dir.mkdir()
    app = shared(models.repo, 2, PROMETHEUS_MULTIPROC_DIR=str(shared_dir))
    try:
        workers = app.workers()
        _hit_live(app.url, 60)
        assert _live_count(app.url) == 60
    finally:
        out = app.stop()
    assert f"PROMETHEUS_MULTIPROC_DIR={shared_dir}" in out
    written = {f.name for f in shared_dir.iterdir()}
    for pid in workers:
        assert f"counter_{pid}.db" in written, (pid, written)


def _metrics_dir(log: str) -> Path:
    line = next(ln for ln in log.splitlines() if "metrics: every worker's" in ln)
    return Path(line.split("files in ", 1)[1].split(", removed", 1)[0])


def _store(log: str) -> Path:
    line = next(ln for ln in log.splitlines() if "session store: lmdb at" in ln)
    return Path(line.split("lmdb at ", 1)[1].split(" (", 1)[0])


def test_workers_go_when_the_supervisor_is_killed(models: RepoModels) -> None:
    app = shared(models.repo, 2)
    workers = app.workers()
    assert len(workers) == 2
    app.proc.kill()  # SIGKILL: no cleanup in the supervisor
    app.proc.wait(10)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() for p in workers):
        assert time.monotonic() < deadline, "orphaned workers kept running"
        time.sleep(0.1)
    store = _store(app.proc.stdout.read() if app.proc.stdout else "")
    shutil.rmtree(store, ignore_errors=True)  # what the killed supervisor could not remove


def test_a_kept_store_outlives_a_restart(models: RepoModels, tmp_path: Path) -> None:
    """--lmdb-path: the store is kept at exit, and the next start serves its sessions."""
    path = tmp_path / "sessions"
    app = shared(models.repo, 2, "--lmdb-path", str(path))
    with httpx.Client(base_url=app.url) as c:
        sid = c.post("/v1/sessions", json={"model": LNSC}).json()["session_id"]
        assert (
            c.post(f"/v1/sessions/{sid}/steps", json={"inputs": [[0.1, 0.2, 0.3]]}).json()["offset"]
            == 1
        )
    out = app.stop()
    assert app.proc.returncode in (0, -signal.SIGTERM), out
    assert f"session store: lmdb at {path} " in out and (path / "data.mdb").exists()
    again = shared(models.repo, 1, "--lmdb-path", str(path))
    try:
        assert httpx.get(f"{again.url}/v1/sessions/{sid}").json()["offset"] == 1
    finally:
        again.stop()
