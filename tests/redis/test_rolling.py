"""A rolling model update across replicas sharing a real Redis: a replica that does not hold
a session's version answers 503 with Retry-After (never another version's result), and in
poll mode loads that version on demand from its repository."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.live import LiveServer, RedisServer, make_settings
from tests.repo import PLAIN, RepoModels, predict, repo_with

pytestmark = pytest.mark.redis
rng = np.random.default_rng(18)


def replica(repo: Path, redis: RedisServer, prefix: str, **kw: object) -> LiveServer:
    settings = make_settings(repo, session_store="redis", redis_url=redis.url,
                             redis_prefix=prefix, **kw)  # fmt: skip
    return LiveServer(settings)


def step(c: httpx.Client, sid: str, x: list, offset: int) -> httpx.Response:
    return c.post(f"/v1/sessions/{sid}/steps", json={"inputs": x, "offset": offset})


def test_replica_without_the_version(
    models: RepoModels, redis_server: RedisServer, tmp_path: Path
) -> None:
    new = repo_with(models, tmp_path / "new", (PLAIN, 1), (PLAIN, 2))  # already updated
    old = repo_with(models, tmp_path / "old", (PLAIN, 1))  # not yet: version 2 arrives later
    pinned = repo_with(models, tmp_path / "pinned", (PLAIN, 1))
    xs = [rng.normal(size=(3, 2)).astype(np.float32).tolist() for _ in range(4)]
    with (
        replica(new, redis_server, "roll:") as a,
        replica(old, redis_server, "roll:", model_control="poll", model_poll_seconds=60) as b,
        replica(pinned, redis_server, "roll:", model_control="explicit") as e,
        a.client() as ca, b.client() as cb, e.client() as ce,
    ):  # fmt: skip
        whole = predict(ca, PLAIN, [sum(xs, [])], 2)["outputs"][0]
        sid = ca.post("/v1/sessions", json={"model": PLAIN}).json()["session_id"]
        out = [step(ca, sid, xs[0], 0).json()["outputs"]]
        for c in (cb, ce):  # neither holds version 2: 503 + Retry-After, nothing applied
            r = step(c, sid, xs[1], 3)
            assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
            assert "version 2" in r.json()["detail"]
        assert cb.get(f"/v1/sessions/{sid}").json()["offset"] == 3
        # the update reaches the old replica's repository; the next session step there loads
        # version 2 on demand (its poll is a minute away) and then answers
        shutil.copytree(models.repo / PLAIN / "2", old / PLAIN / "2")
        deadline = time.monotonic() + 30
        while (r := step(cb, sid, xs[1], 3)).status_code == 503:
            assert r.headers["Retry-After"] and time.monotonic() < deadline
            time.sleep(0.1)
        assert r.status_code == 200, r.text
        out.append(r.json()["outputs"])
        out.append(step(ca, sid, xs[2], 6).json()["outputs"])
        out.append(step(cb, sid, xs[3], 9).json()["outputs"])
        np.testing.assert_allclose(np.concatenate(out), whole, atol=1e-5)
        for _ in range(3):  # explicit mode never loads by itself
            assert step(ce, sid, xs[0], 12).status_code == 503
