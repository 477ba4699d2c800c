"""Sessions and v2 sequences on a real Redis Cluster (3 masters + 3 replicas on loopback,
made with `redis-cli --cluster create`), served by two `python -m app` replicas in
PEEPHOLE_REDIS_MODE=cluster with PEEPHOLE_REDIS_MIN_REPLICAS=1."""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import tritonclient.http as th

from app.sessions.redis_keys import Keys
from tests.redis.conftest import DURABLE, MODEL, Replica, start_all
from tests.redis.test_replicas import chunks, create, predict, step
from tests.redis.topology import LocalCluster

pytestmark = pytest.mark.redis
RNG = np.random.default_rng(5)
ENV = {"PEEPHOLE_REDIS_MODE": "cluster", **DURABLE}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def pair(repo: Path, cluster: LocalCluster) -> Iterator[list[Replica]]:
    replicas = start_all([Replica(repo, cluster.url, **ENV) for _ in range(2)])
    yield replicas
    for r in replicas:
        r.stop()


_NOT_OURS = ("info", "replconf", "ping")  # the test's INFO, replication's acknowledgements


def commands(cluster: LocalCluster, masters: list[int]) -> dict[str, int]:
    """Calls per command the masters have run so far (INFO commandstats; a script's own
    commands included), cluster and replication housekeeping left out."""
    calls: dict[str, int] = {}
    for port in masters:
        for line in cluster.node(port).cli("info", "commandstats").splitlines():
            name = line.split(":")[0].removeprefix("cmdstat_")
            if line.startswith("cmdstat_") and name not in _NOT_OURS and "cluster" not in name:
                calls[name] = calls.get(name, 0) + int(line.split("calls=")[1].split(",")[0])
    return calls


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def test_a_sessions_keys_share_a_slot_and_sessions_spread_over_every_master(
    pair: list[Replica], cluster: LocalCluster
) -> None:
    keys = Keys("peephole:", 1024, tagged=True)
    with pair[0].client() as c:
        ids = [create(c) for _ in range(24)]
        assert step(c, ids[0], RNG.normal(size=(3, 2)).astype(np.float32), 0).status_code == 200
        state = c.get(f"/v1/sessions/{ids[0]}/state").json()["state"]
    node = cluster.node(cluster.master_ports()[0])
    for sid in ids:
        hash_key, index = keys.session(sid)
        assert node.cli("cluster", "keyslot", hash_key) == node.cli("cluster", "keyslot", index)
    held = {p: int(cluster.node(p).cli("dbsize")) for p in cluster.master_ports()}
    assert all(n > 0 for n in held.values()), held
    rc = redis.RedisCluster.from_url(cluster.url)
    raw = rc.hget(keys.session(ids[0])[0], "state:cell_states")
    assert raw is not None and len(raw) == 16
    np.testing.assert_array_equal(np.frombuffer(raw, np.float32), np.float32(state["cell_states"]))
    rc.close()


def test_chunks_alternated_between_replicas_equal_whole_predict(pair: list[Replica]) -> None:
    a, b = (r.client() for r in pair)
    x = RNG.normal(size=(30, 2)).astype(np.float32)
    whole, _ = predict(a, x)
    sid = create(a)
    outs, offset = [], 0
    for i, c in enumerate(chunks(x, [1, 6, 3, 12, 8])):
        r = step((a, b)[i % 2], sid, c, offset)
        assert r.status_code == 200, r.text
        again = step((b, a)[i % 2], sid, c, offset)  # a retry on the other replica
        assert again.json() == r.json()
        offset = r.json()["offset"]
        outs.append(np.asarray(r.json()["outputs"]))
    assert offset == 30
    np.testing.assert_allclose(np.concatenate(outs), whole, atol=1e-5)
    assert step(b, sid, x[:2], 22).status_code == 409  # the last chunk's offset, other inputs


def test_concurrent_steps_across_replicas_are_applied_exactly_once(pair: list[Replica]) -> None:
    clients = [r.client() for r in pair]
    sid = create(clients[0])
    xs = RNG.normal(size=(16, 1, 2)).astype(np.float32)

    def one(i: int) -> tuple[int, list]:
        r = step(clients[i % 2], sid, xs[i])
        assert r.status_code == 200, r.text
        return r.json()["offset"], r.json()["outputs"]

    with cf.ThreadPoolExecutor(max_workers=16) as pool:
        results = sorted(pool.map(one, range(16)), key=lambda r: r[0])
    assert [off for off, _ in results] == list(range(1, 17))
    # The outputs, in the order applied, are one sequence: recover the order from outputs.
    state = clients[1].get(f"/v1/sessions/{sid}/state").json()
    assert state["offset"] == 16


def test_v2_sequence_alternates_between_replicas(pair: list[Replica]) -> None:
    clients = [th.InferenceServerClient(r.url.removeprefix("http://")) for r in pair]
    x = RNG.normal(size=(1, 20, 2)).astype(np.float32)
    cuts = [0, 3, 4, 11, 20]
    ys = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        inp = th.InferInput("x", [1, b - a, 2], "FP32")
        inp.set_data_from_numpy(x[:, a:b])
        r = clients[i % 2].infer(MODEL, [inp], sequence_id=4242, sequence_start=i == 0,
                                 sequence_end=b == 20)  # fmt: skip
        ys.append(r.as_numpy("y"))
    whole = th.InferInput("x", [1, 20, 2], "FP32")
    whole.set_data_from_numpy(x)
    expected = clients[1].infer(MODEL, [whole]).as_numpy("y")
    np.testing.assert_allclose(np.concatenate(ys, axis=1), expected, atol=1e-5)
    for c in clients:
        c.close()


def test_capacity_is_shared_and_a_refusal_costs_a_constant_few_commands(
    repo: Path, cluster: LocalCluster
) -> None:
    env = {**ENV, "PEEPHOLE_MAX_SESSIONS": "6", "PEEPHOLE_REDIS_PREFIX": "cap:"}
    a_rep, b_rep = start_all([Replica(repo, cluster.url, **env) for _ in range(2)])
    try:
        a, b = a_rep.client(), b_rep.client()
        born = time.monotonic()
        short = create(a, ttl_seconds=8)
        for _ in range(5):
            create(a)
        time.sleep(2.1)  # within the bound (two count periods) b could still create; past it:
        assert b.post("/v1/sessions", json={"model": MODEL}).status_code == 429
        masters = cluster.master_ports()
        before = commands(cluster, masters)
        r = a.post("/v1/sessions", json={"model": MODEL})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, r.text
        # a read the shared total b just summed; Redis only checked that the new id is not a
        # live session being replaced (O(1): no index was read or counted).
        spent = delta(before, commands(cluster, masters))
        assert set(spent) <= {"evalsha", "time", "exists", "hget", "wait", "get"}, spent
        assert sum(spent.values()) <= 6, spent
        # The short session expires, and both counts are past their 1 s period.
        time.sleep(max(0.0, born + 8 + 2.1 - time.monotonic()))
        assert a.get(f"/v1/sessions/{short}").status_code == 404
        assert b.post("/v1/sessions", json={"model": MODEL}).status_code == 201
        assert b.post("/v1/sessions", json={"model": MODEL}).status_code == 429
        assert "peephole_sessions_live 6.0" in b.get("/metrics").text
    finally:
        a_rep.stop()
        b_rep.stop()
