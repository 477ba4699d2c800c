"""The WebSocket stream: same bodies as /steps, errors answered in-band, 4404 for unknown."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.live import LiveServer
from tests.repo import LNSC, get_state, new_session

rng = np.random.default_rng(2)


def ask(ws, body: object) -> dict:  # type: ignore[no-untyped-def]
    ws.send(body if isinstance(body, str | bytes) else json.dumps(body))
    return json.loads(ws.recv(timeout=10))


def test_stream_equals_whole_predict(server: LiveServer, client: httpx.Client) -> None:
    x = rng.normal(size=(50, 3)).astype(np.float32)
    ref = client.post(f"/v1/models/{LNSC}/predict", json={"inputs": [x.tolist()]}).json()
    sid = new_session(client, LNSC)
    outs, t = [], 0
    with connect(f"{server.ws_url}/v1/sessions/{sid}/stream") as ws:
        while t < len(x):
            n = int(rng.integers(1, 9))
            r = ask(ws, {"inputs": x[t : t + n].tolist(), "offset": t})
            t = min(len(x), t + n)
            assert r["session_id"] == sid and r["offset"] == t
            outs.extend(r["outputs"])
    np.testing.assert_allclose(outs, ref["outputs"][0], atol=1e-5)
    assert get_state(client, sid)["offset"] == len(x)


def test_stream_errors_keep_the_socket_open(server: LiveServer, client: httpx.Client) -> None:
    sid = new_session(client, LNSC)
    with connect(f"{server.ws_url}/v1/sessions/{sid}/stream") as ws:
        ok = ask(ws, {"inputs": [[0.1, 0.2, 0.3]], "offset": 0})
        before = get_state(client, sid)
        for body, status in [
            ("not json", 422),
            ('{"inputs": [[NaN, 0, 0]]}', 422),
            ({"inputs": [[0.1, 0.2]]}, 422),
            ({"inputs": [[True, 0.2, 0.3]]}, 422),
            ({"inputs": []}, 422),
            ([1, 2], 422),
            ({"inputs": [[0.0, 0.0, 0.0]] * (server.settings.max_steps + 1)}, 413),
            ({"inputs": [[0.5, 0.5, 0.5]], "offset": 0}, 409),
            ({"inputs": [[0.5, 0.5, 0.5]], "offset": 7}, 409),
        ]:
            r = ask(ws, body)
            assert r["status"] == status, (body, r)
            assert isinstance(r["detail"], str)
            if status == 409:
                assert r["offset"] == 1
        assert get_state(client, sid) == before
        retry = ask(ws, {"inputs": [[0.1, 0.2, 0.3]], "offset": 0})
        assert retry == ok
        r = ask(ws, b'{"inputs": [[0.1, 0.2, 0.3]], "offset": 1}')  # binary frames work too
        assert r["offset"] == 2
        # the session is deleted under the socket: 404, then the server closes with 4404
        assert client.delete(f"/v1/sessions/{sid}").status_code == 204
        r = ask(ws, {"inputs": [[0.1, 0.2, 0.3]]})
        assert r["status"] == 404
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=10)
        assert e.value.rcvd is not None and e.value.rcvd.code == 4404


def test_stream_unknown_session(server: LiveServer) -> None:
    with connect(f"{server.ws_url}/v1/sessions/nope/stream") as ws:
        r = json.loads(ws.recv(timeout=10))
        assert r["status"] == 404 and r["detail"]
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=10)
    assert e.value.rcvd is not None and e.value.rcvd.code == 4404


def test_stream_extends_ttl(server: LiveServer, client: httpx.Client) -> None:
    import time

    sid = new_session(client, LNSC, ttl_seconds=2)  # used every 1.1 s, alive past 2 s
    with connect(f"{server.ws_url}/v1/sessions/{sid}/stream") as ws:
        for _ in range(2):
            time.sleep(1.1)
            assert "outputs" in ask(ws, {"inputs": [[0.0, 0.0, 0.0]]})
    assert client.get(f"/v1/sessions/{sid}").status_code == 200
