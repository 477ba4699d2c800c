"""Streaming sessions over HTTP: chunks equal whole predictions, offsets and exactly-once
retries, errors that leave the session untouched, concurrency, export/restore, TTL."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import httpx
import numpy as np
import pytest

from tests.live import LiveServer
from tests.repo import LNSC, PLAIN, SIZES, get_state, new_session

rng = np.random.default_rng(1)


def steps(client: httpx.Client, sid: str, x: np.ndarray | list, **kw: object) -> httpx.Response:
    inputs = x.tolist() if isinstance(x, np.ndarray) else x
    return client.post(f"/v1/sessions/{sid}/steps", json={"inputs": inputs, **kw})


def whole(client: httpx.Client, name: str, x: np.ndarray) -> dict:
    r = client.post(
        f"/v1/models/{name}/predict", json={"inputs": [x.tolist()], "return_state": True}
    )
    assert r.status_code == 200
    return r.json()


def test_lifecycle(client: httpx.Client) -> None:
    r = client.post("/v1/sessions", json={"model": PLAIN, "version": 1, "ttl_seconds": 60})
    assert r.status_code == 201, r.text
    s = r.json()
    assert set(s) >= {"session_id", "model", "version", "offset", "created_at", "expires_at"}
    assert (s["model"], s["version"], s["offset"]) == (PLAIN, 1, 0)
    created = datetime.fromisoformat(s["created_at"])
    expires = datetime.fromisoformat(s["expires_at"])
    assert created.utcoffset().total_seconds() == 0 and s["created_at"].endswith("Z")
    assert abs((expires - created).total_seconds() - 60) < 1
    sid = s["session_id"]
    assert steps(client, sid, [[0.1, 0.2]] * 3).json()["offset"] == 3
    time.sleep(0.01)
    g = client.get(f"/v1/sessions/{sid}").json()
    assert g["offset"] == 3 and g["created_at"] == s["created_at"]
    assert g["expires_at"] > s["expires_at"]  # every use extends the life
    st = get_state(client, sid)
    assert (st["session_id"], st["model"], st["version"], st["offset"]) == (sid, PLAIN, 1, 3)
    assert set(st["state"]) == {"cell_states", "cell_outputs"}
    r = client.post(f"/v1/sessions/{sid}/reset")
    assert r.status_code == 200 and r.json()["offset"] == 0
    assert np.allclose(get_state(client, sid)["state"]["cell_states"], 0)
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    for call in (
        client.get(f"/v1/sessions/{sid}"),
        client.get(f"/v1/sessions/{sid}/state"),
        client.post(f"/v1/sessions/{sid}/reset"),
        client.delete(f"/v1/sessions/{sid}"),
        steps(client, sid, [[0.0, 0.0]]),
    ):
        assert call.status_code == 404 and "detail" in call.json()


def test_default_version_is_newest(client: httpx.Client) -> None:
    assert client.post("/v1/sessions", json={"model": PLAIN}).json()["version"] == 2


@pytest.mark.parametrize("name", [PLAIN, LNSC])
def test_random_chunks_equal_whole_predict(client: httpx.Client, name: str) -> None:
    x = rng.normal(size=(120, SIZES[name][0])).astype(np.float32)
    ref = whole(client, name, x)
    sid = new_session(client, name)
    outs, t = [], 0
    while t < len(x):
        n = int(rng.integers(1, 25))
        r = steps(client, sid, x[t : t + n], offset=t)
        assert r.status_code == 200, r.text
        t = min(len(x), t + n)
        assert r.json()["offset"] == t
        outs.extend(r.json()["outputs"])
    np.testing.assert_allclose(outs, ref["outputs"][0], atol=1e-5)
    st = get_state(client, sid)["state"]
    for k, v in ref["state"][0].items():
        np.testing.assert_allclose(st[k], v, atol=1e-5)


def test_retry_and_conflicts(client: httpx.Client) -> None:
    sid = new_session(client, LNSC)
    a = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=(3, 3)).astype(np.float32)
    first = steps(client, sid, a, offset=0).json()
    second = steps(client, sid, b, offset=4).json()
    assert second["offset"] == 7
    before = get_state(client, sid)
    # a retry of the last chunk: same outputs, nothing applied
    again = steps(client, sid, b, offset=4)
    assert again.status_code == 200 and again.json() == second
    assert get_state(client, sid) == before
    # the last chunk's offset with other inputs, an older chunk, the future: 409 + current offset
    for x, off in ((a[:3], 4), (a, 0), (b, 8), (b, 3)):
        r = steps(client, sid, x, offset=off)
        assert r.status_code == 409, r.text
        assert r.json()["offset"] == 7 and "detail" in r.json()
    assert get_state(client, sid) == before
    assert first["outputs"] != second["outputs"]


def test_errors_leave_the_session_untouched(client: httpx.Client, server: LiveServer) -> None:
    sid = new_session(client, LNSC)
    steps(client, sid, [[0.1, 0.2, 0.3]] * 2)
    before = get_state(client, sid)
    bad = [
        ({"inputs": [[0.1, 0.2]]}, 422),  # feature count
        ({"inputs": []}, 422),  # empty
        ({"inputs": [[[0.1, 0.2, 0.3]]]}, 422),  # nesting
        ({"inputs": [[True, 0.2, 0.3]]}, 422),
        ({"inputs": [["0.1", 0.2, 0.3]]}, 422),
        ({"inputs": [[0.1, None, 0.3]]}, 422),
        ({"inputs": [[1e39, 0.2, 0.3]]}, 422),
        ({"inputs": [[0.1, 0.2, 0.3]], "offset": -1}, 422),
        ({"inputs": [[0.1, 0.2, 0.3]], "offset": "2"}, 422),
        ({"inputs": [[0.1, 0.2, 0.3]], "offset": 2.0}, 422),
        ({"inputs": [[0.1, 0.2, 0.3]], "offset": True}, 422),
        ({"inputs": [[0.1, 0.2, 0.3]], "offset": 5}, 409),
        ({"inputs": [[0.1, 0.2, 0.3]], "return_internals": "yes"}, 422),
        ({"inputs": [[0.1, 0.2, 0.3]], "bogus": 1}, 422),
        ({"inputs": [[0.0, 0.0, 0.0]] * (server.settings.max_steps + 1)}, 413),
    ]
    for body, status in bad:
        r = client.post(f"/v1/sessions/{sid}/steps", json=body)
        assert r.status_code == status, (body, r.text)
        assert isinstance(r.json()["detail"], str)
    for raw in (b'{"inputs": [[NaN, 0, 0]]}', b'{"inputs": [[Infinity, 0, 0]]}', b"{", b""):
        r = client.post(
            f"/v1/sessions/{sid}/steps", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == 422, raw
    after = get_state(client, sid)
    assert after == before


def test_internals_on_steps(client: httpx.Client) -> None:
    x = rng.normal(size=(6, 3)).astype(np.float32)
    ref = client.post(
        f"/v1/models/{LNSC}/predict", json={"inputs": [x.tolist()], "return_internals": True}
    ).json()["internals"][0]
    sid = new_session(client, LNSC)
    got = [
        steps(client, sid, x[:4], return_internals=True, offset=0).json()["internals"],
        steps(client, sid, x[4:], return_internals=True, offset=4).json()["internals"],
    ]
    np.testing.assert_allclose(
        got[0]["cell_states"] + got[1]["cell_states"], ref["cell_states"], atol=1e-5
    )
    np.testing.assert_allclose(
        got[0]["gates"]["output"] + got[1]["gates"]["output"], ref["gates"]["output"], atol=1e-5
    )
    # a retry asking for internals gets the same ones back
    again = steps(client, sid, x[4:], return_internals=True, offset=4).json()
    assert again["internals"] == got[1]
    # the plain v1 model has no internals graph
    sid1 = new_session(client, PLAIN, version=1)
    r = steps(client, sid1, [[0.0, 0.0]], return_internals=True)
    assert r.status_code == 422 and "internals" in r.json()["detail"]
    assert get_state(client, sid1)["offset"] == 0


def test_export_and_restore(client: httpx.Client) -> None:
    x = rng.normal(size=(20, 2)).astype(np.float32)
    ref = whole(client, PLAIN, x)
    sid = new_session(client, PLAIN)
    steps(client, sid, x[:8])
    exported = get_state(client, sid)
    r = client.post("/v1/sessions", json={"model": PLAIN, "state": exported["state"], "offset": 8})
    assert r.status_code == 201 and r.json()["offset"] == 8
    sid2 = r.json()["session_id"]
    rest = steps(client, sid2, x[8:], offset=8).json()
    assert rest["offset"] == 20
    np.testing.assert_allclose(rest["outputs"], ref["outputs"][0][8:], atol=1e-5)
    # state without offset restores at offset 0
    r = client.post("/v1/sessions", json={"model": PLAIN, "state": exported["state"]})
    assert r.status_code == 201 and r.json()["offset"] == 0


def test_bad_creates(client: httpx.Client, server: LiveServer) -> None:
    good_state = get_state(client, new_session(client, PLAIN))["state"]
    cases = [
        ({"model": "nope"}, 404),
        ({"model": PLAIN, "version": 9}, 404),
        ({"model": "bad-sha"}, 404),
        ({}, 422),
        ({"model": 1}, 422),
        ({"model": PLAIN, "version": "1"}, 422),
        ({"model": PLAIN, "version": 0}, 422),
        ({"model": PLAIN, "offset": 3}, 422),  # offset without state
        ({"model": PLAIN, "state": good_state, "offset": -1}, 422),
        ({"model": PLAIN, "ttl_seconds": 0}, 422),
        ({"model": PLAIN, "ttl_seconds": -5}, 422),
        ({"model": PLAIN, "ttl_seconds": 1.5}, 422),
        ({"model": PLAIN, "ttl_seconds": "60"}, 422),
        ({"model": PLAIN, "ttl_seconds": server.settings.max_ttl_seconds + 1}, 422),
        ({"model": PLAIN, "state": {"cell_states": [0, 0, 0]}}, 422),
        ({"model": PLAIN, "state": {**good_state, "cell_states": [0, 0]}}, 422),
        ({"model": PLAIN, "state": {**good_state, "cell_states": [0, 0, True]}}, 422),
        ({"model": PLAIN, "state": [good_state]}, 422),
        ({"model": PLAIN, "extra": 1}, 422),
    ]
    for body, status in cases:
        r = client.post("/v1/sessions", json=body)
        assert r.status_code == status, (body, r.text)
        assert isinstance(r.json()["detail"], str)
    r = client.post(
        "/v1/sessions", json={"model": PLAIN, "ttl_seconds": server.settings.max_ttl_seconds}
    )
    assert r.status_code == 201


def test_concurrent_steps_are_serialised(server: LiveServer) -> None:
    """32 chunks at once on one session: none lost, none doubled, state = serial replay."""
    sid = new_session(httpx.Client(base_url=server.url), LNSC)
    chunks = [rng.normal(size=(int(rng.integers(1, 6)), 3)).astype(np.float32) for _ in range(32)]

    async def fire() -> list[dict]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as ac:
            rs = await asyncio.gather(
                *(ac.post(f"/v1/sessions/{sid}/steps", json={"inputs": c.tolist()}) for c in chunks)
            )
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
        return [r.json() for r in rs]

    results = asyncio.run(fire())
    total = sum(len(c) for c in chunks)
    ends = sorted(r["offset"] for r in results)
    # applied one at a time: the end offsets are the running sums of some order of the chunks
    order = sorted(range(len(chunks)), key=lambda i: results[i]["offset"])
    assert ends[-1] == total and len(set(ends)) == len(ends)
    replay = np.concatenate([chunks[i] for i in order])
    with httpx.Client(base_url=server.url) as c:
        ref = whole(c, LNSC, replay)
        st = get_state(c, sid)
    assert st["offset"] == total
    for k, v in ref["state"][0].items():
        np.testing.assert_allclose(st["state"][k], v, atol=1e-5)
    t = 0
    for i in order:
        n = len(chunks[i])
        assert results[i]["offset"] == t + n
        np.testing.assert_allclose(results[i]["outputs"], ref["outputs"][0][t : t + n], atol=1e-5)
        t += n


def test_concurrent_same_offset_applies_once(server: LiveServer) -> None:
    sid = new_session(httpx.Client(base_url=server.url), LNSC)
    chunks = [rng.normal(size=(2, 3)).astype(np.float32) for _ in range(8)]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as ac:
            return await asyncio.gather(
                *(
                    ac.post(f"/v1/sessions/{sid}/steps", json={"inputs": c.tolist(), "offset": 0})
                    for c in chunks
                )
            )

    rs = asyncio.run(fire())
    assert sorted(r.status_code for r in rs) == [200] + [409] * 7
    assert all(r.json()["offset"] == 2 for r in rs)


def test_ttl_expiry_sliding(client: httpx.Client) -> None:
    """Uses 1.1 s apart keep a 2 s session alive past its first deadline (0.9 s to spare
    for a loaded box at each use); 2.2 s unused, it is gone."""
    sid = new_session(client, PLAIN, ttl_seconds=2)
    for _ in range(2):
        time.sleep(1.1)
        assert steps(client, sid, [[0.0, 0.0]]).status_code == 200
    time.sleep(2.2)
    r = client.get(f"/v1/sessions/{sid}")
    assert r.status_code == 404 and "detail" in r.json()


def test_offsets_stay_in_the_range_every_store_holds(client: httpx.Client) -> None:
    """Offsets are 0..2**53-1 (exact in every JSON client, an int64 in every store): past it
    a create or a step is 422 and the session is untouched, never a 500 on a later read."""
    top = 2**53 - 1
    state = get_state(client, new_session(client, LNSC))["state"]
    for bad in (2**53, 2**63, 2**64 - 1, 2**70):
        r = client.post("/v1/sessions", json={"model": LNSC, "state": state, "offset": bad})
        assert r.status_code == 422, (bad, r.text)
    r = client.post("/v1/sessions", json={"model": LNSC, "state": state, "offset": top})
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    x = [[0.1] * SIZES[LNSC][0]]
    for kw in ({}, {"offset": top}):
        r = steps(client, sid, x, **kw)
        assert r.status_code == 422 and str(top) in r.json()["detail"], r.text
    assert steps(client, sid, x, offset=2**64).status_code == 422
    after = get_state(client, sid)
    assert after["offset"] == top and after["state"] == state
    assert client.get(f"/v1/sessions/{sid}").status_code == 200


def test_v2_sequences_are_not_v1_sessions(client: httpx.Client, server: LiveServer) -> None:
    """A KServe v2 sequence lives in the same store but no /v1 route reaches it (404), and it
    goes on over /v2 untouched."""
    n_in = SIZES[LNSC][0]

    def infer(start: bool) -> httpx.Response:
        body = {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 1, n_in], "data": [0.5] * n_in}
            ],
            "parameters": {"sequence_id": 4242, "sequence_start": start},
        }
        return client.post(f"/v2/models/{LNSC}/infer", json=body)

    assert infer(True).status_code == 200
    for sid in (f"v2:{LNSC}:1:u:4242", f"v2%3A{LNSC}%3A1%3Au%3A4242"):
        assert client.get(f"/v1/sessions/{sid}").status_code == 404
        assert client.get(f"/v1/sessions/{sid}/state").status_code == 404
        assert steps(client, sid, [[0.1] * n_in]).status_code == 404
        assert client.post(f"/v1/sessions/{sid}/reset").status_code == 404
        assert client.delete(f"/v1/sessions/{sid}").status_code == 404
    from websockets.sync.client import connect

    with connect(f"{server.ws_url}/v1/sessions/v2:{LNSC}:1:u:4242/stream") as ws:
        assert '"status":404' in ws.recv().replace(" ", "")
    assert infer(False).status_code == 200  # the sequence was neither stepped nor deleted


def test_idempotency_key_makes_a_retried_create_return_the_same_session(
    client: httpx.Client, server: LiveServer
) -> None:
    key = {"Idempotency-Key": "7d8c1a52-idem-test"}
    body = {"model": LNSC, "ttl_seconds": 120}
    first = client.post("/v1/sessions", json=body, headers=key)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    sid = first.json()["session_id"]
    assert steps(client, sid, [[0.1, 0.2, 0.3]], offset=0).status_code == 200
    again = client.post("/v1/sessions", json=body, headers=key)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["session_id"] == sid and again.json()["offset"] == 1  # as it stands now
    # another key, or none, is another session; the same key on another model is refused
    other = client.post("/v1/sessions", json=body, headers={"Idempotency-Key": "another"})
    assert other.json()["session_id"] != sid
    assert client.post("/v1/sessions", json=body).json()["session_id"] != sid
    r = client.post("/v1/sessions", json={"model": PLAIN}, headers=key)
    assert r.status_code == 422 and "Idempotency-Key" in r.json()["detail"]
    for bad in ("", "x" * 256, "has space", "\u00e9t\u00e9"):
        r = client.post("/v1/sessions", json=body, headers={"Idempotency-Key": bad.encode()})
        assert r.status_code == 422, (bad, r.text)

    # concurrent retries of one create: one session, made by one of them
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url) as ac:
            return await asyncio.gather(
                *(
                    ac.post("/v1/sessions", json=body, headers={"Idempotency-Key": "burst-1"})
                    for _ in range(8)
                )
            )

    rs = asyncio.run(burst())
    assert len({r.json()["session_id"] for r in rs}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") != "true" for r in rs) == 1
    # after the session ends, the key opens a new one
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    fresh = client.post("/v1/sessions", json=body, headers=key)
    assert fresh.status_code == 201 and fresh.json()["offset"] == 0
