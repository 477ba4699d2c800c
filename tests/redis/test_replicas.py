"""Sessions across replicas sharing a real Redis: continuity, failover, exactly-once, outages."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from tests.live import RedisServer, Replica
from tests.redis.conftest import MODEL

pytestmark = pytest.mark.redis
RNG = np.random.default_rng(11)


def predict(
    client: httpx.Client, x: np.ndarray, state: dict | None = None
) -> tuple[np.ndarray, dict]:
    body = {
        "inputs": [x.tolist()],
        "return_state": True,
        "state": None if state is None else [state],
    }
    r = client.post(f"/v1/models/{MODEL}/predict", json=body)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"][0]), r.json()["state"][0]


def create(client: httpx.Client, **kw: object) -> str:
    r = client.post("/v1/sessions", json={"model": MODEL, **kw})
    assert r.status_code == 201, r.text
    return str(r.json()["session_id"])


def step(
    client: httpx.Client, sid: str, x: np.ndarray, offset: int | None = None
) -> httpx.Response:
    body: dict[str, object] = {"inputs": x.tolist()}
    if offset is not None:
        body["offset"] = offset
    return client.post(f"/v1/sessions/{sid}/steps", json=body)


def chunks(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(x, np.cumsum(sizes)[:-1])


def test_chunks_alternated_between_replicas_equal_whole_predict(replicas: list[Replica]) -> None:
    a, b = (r.client() for r in replicas)
    x = RNG.normal(size=(40, 2)).astype(np.float32)
    whole, _ = predict(a, x)
    sid = create(a)
    outs, offset = [], 0
    for i, c in enumerate(chunks(x, [1, 7, 3, 12, 1, 16])):
        r = step((a, b)[i % 2], sid, c, offset)
        assert r.status_code == 200, r.text
        offset = r.json()["offset"]
        outs.append(np.asarray(r.json()["outputs"]))
    assert offset == 40
    np.testing.assert_allclose(np.concatenate(outs), whole, atol=1e-5)


def test_retry_on_the_other_replica_returns_the_same_outputs(replicas: list[Replica]) -> None:
    a, b = (r.client() for r in replicas)
    sid = create(a)
    x = RNG.normal(size=(5, 2)).astype(np.float32)
    first = step(a, sid, x, 0)
    again = step(b, sid, x, 0)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    stale = step(b, sid, x[:2], 0)  # the last chunk's offset with other inputs
    assert stale.status_code == 409 and stale.json()["offset"] == 5


def test_kill_a_replica_mid_stream_and_go_on(repo: Path, redis_server: RedisServer) -> None:
    first = Replica(repo, redis_server.url).start()
    second = Replica(repo, redis_server.url).start()
    third = Replica(repo, redis_server.url)
    try:
        x = RNG.normal(size=(30, 2)).astype(np.float32)
        with first.client() as c:
            whole, _ = predict(c, x)
            sid = create(c)
            assert step(c, sid, x[:10], 0).status_code == 200
        first.kill()  # SIGKILL: no graceful anything
        outs = []
        with second.client() as c:
            r = step(c, sid, x[10:20], 10)
            assert r.status_code == 200, r.text
            outs.append(np.asarray(r.json()["outputs"]))
        second.kill()
        third.start()
        with third.client() as c:
            r = step(c, sid, x[20:], 20)
            assert r.status_code == 200, r.text
            outs.append(np.asarray(r.json()["outputs"]))
            assert r.json()["offset"] == 30
        np.testing.assert_allclose(np.concatenate(outs), whole[10:], atol=1e-5)
    finally:
        for r in (first, second, third):
            r.stop()


def test_concurrent_steps_across_replicas_are_applied_exactly_once(
    replicas: list[Replica],
) -> None:
    clients = [r.client() for r in replicas]
    sid = create(clients[0])
    xs = RNG.normal(size=(20, 1, 2)).astype(np.float32)

    def one(i: int) -> tuple[int, int, list]:
        r = step(clients[i % 2], sid, xs[i])
        assert r.status_code == 200, r.text
        return i, r.json()["offset"], r.json()["outputs"]

    with cf.ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    assert sorted(off for _, off, _ in results) == list(range(1, 21))
    # Replaying the inputs in the order the server applied them reproduces every output and
    # the final state: nothing was lost, doubled or interleaved.
    order = [i for i, _, _ in sorted(results, key=lambda r: r[1])]
    replay, final = predict(clients[0], xs[order, 0])
    got = np.concatenate([np.asarray(out) for _, _, out in sorted(results, key=lambda r: r[1])])
    np.testing.assert_allclose(got, replay, atol=1e-5)
    state = clients[1].get(f"/v1/sessions/{sid}/state").json()
    assert state["offset"] == 20
    for k, v in final.items():
        np.testing.assert_allclose(state["state"][k], v, atol=1e-5)


def test_state_is_stored_as_raw_float32(replicas: list[Replica], redis_server: RedisServer) -> None:
    with replicas[0].client() as c:
        sid = create(c)
        assert step(c, sid, RNG.normal(size=(3, 2)).astype(np.float32)).status_code == 200
        state = c.get(f"/v1/sessions/{sid}/state").json()["state"]
    r = redis.Redis.from_url(redis_server.url)
    raw = r.hget(f"peephole:s:{sid}", "state:cell_states")
    assert raw is not None and len(raw) == 4 * 4  # 2 blocks x 2 cells, float32
    np.testing.assert_array_equal(np.frombuffer(raw, np.float32), np.float32(state["cell_states"]))


def test_capacity_and_expiry_are_shared(repo: Path, redis_server: RedisServer) -> None:
    # A separate key prefix: this pair counts only its own sessions.
    env = {"PEEPHOLE_MAX_SESSIONS": "3", "PEEPHOLE_REDIS_PREFIX": "cap-test:"}
    pair = [Replica(repo, redis_server.url, **env).start() for _ in range(2)]
    try:
        a, b = (r.client() for r in pair)
        create(b)
        create(a)
        short = create(a, ttl_seconds=2)  # last, so a slow box cannot expire it too early
        r = b.post("/v1/sessions", json={"model": MODEL})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        time.sleep(2.5)  # the short session expires in Redis: gone on both replicas
        assert a.get(f"/v1/sessions/{short}").status_code == 404
        assert b.get(f"/v1/sessions/{short}").status_code == 404
        assert b.post("/v1/sessions", json={"model": MODEL}).status_code == 201
    finally:
        for p in pair:
            p.stop()


def test_redis_outage_is_503_and_recovers(
    replicas: list[Replica], redis_server: RedisServer
) -> None:
    a, b = (r.client() for r in replicas)
    sid = create(a)
    x = RNG.normal(size=(4, 2)).astype(np.float32)
    assert step(a, sid, x[:2], 0).status_code == 200
    redis_server.stop()
    try:
        for c in (a, b):
            r = c.get("/health/ready")
            assert r.status_code == 503 and r.json()["detail"].count("unreachable") == 1, r.text
            assert c.get("/health/live").status_code == 200
            for r in (step(c, sid, x[2:], 2), c.get(f"/v1/sessions/{sid}"),
                      c.post("/v1/sessions", json={"model": MODEL})):  # fmt: skip
                assert r.status_code == 503, r.text
                assert "detail" in r.json()
            # Prediction needs no session store and goes on.
            assert (
                c.post(f"/v1/models/{MODEL}/predict", json={"inputs": [x.tolist()]}).status_code
                == 200
            )
    finally:
        redis_server.start()
    deadline = time.monotonic() + 30  # the replicas' reconnect backoff, on a loaded box
    while a.get("/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "did not recover"
        time.sleep(0.1)
    # The append-only file kept the session: it goes on where it stood.
    r = step(b, sid, x[2:], 2)
    assert r.status_code == 200, r.text
    whole, _ = predict(a, x)
    np.testing.assert_allclose(r.json()["outputs"], whole[2:], atol=1e-5)


def test_racing_retries_of_one_create_make_one_session(replicas: list[Replica]) -> None:
    """12 copies of one create (one Idempotency-Key) sent at once to both replicas, five keys
    over: each key's session is created by exactly one of them, and the rest replay it."""
    clients = [r.client() for r in replicas]
    start = threading.Barrier(12)

    def one(i: int, key: str) -> httpx.Response:
        start.wait()
        return clients[i % 2].post(
            "/v1/sessions", json={"model": MODEL}, headers={"Idempotency-Key": key}
        )

    with cf.ThreadPoolExecutor(max_workers=12) as pool:
        for round in range(5):
            key = f"race-{round}-{time.time_ns()}"
            rs = list(pool.map(one, range(12), [key] * 12))
            assert [r.status_code for r in rs] == [201] * 12, [r.text for r in rs]
            assert len({r.json()["session_id"] for r in rs}) == 1
            made = [r for r in rs if r.headers.get("Idempotent-Replayed") != "true"]
            assert len(made) == 1, f"{len(made)} of 12 racing creates each made the session"
