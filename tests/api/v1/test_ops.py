"""Health, metrics, capacity (429 + Retry-After) and API keys, each on a real server."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.live import LiveServer, make_settings
from tests.repo import LNSC, PLAIN, RepoModels


def test_health(client: httpx.Client) -> None:
    r = client.get("/health/live")
    assert r.status_code == 200 and r.json()["status"] == "live"
    r = client.get("/health/ready")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    assert r.json()["models"] == 3  # plain/1, plain/2, lnsc/1: the refused ones do not count


def test_not_ready_when_store_fails(models: RepoModels) -> None:
    from app.errors import StoreUnavailable
    from app.sessions.memory import MemorySessionStore

    class Broken(MemorySessionStore):
        async def ping(self) -> None:
            raise StoreUnavailable("connection refused")

        async def create(self, session):  # type: ignore[no-untyped-def]
            raise StoreUnavailable("connection refused")

    settings = make_settings(models.repo)
    with LiveServer(settings, store=Broken(max_sessions=10)) as s, s.client() as c:
        r = c.get("/health/ready")
        assert (
            r.status_code == 503
            and r.json()["detail"] == "session store unreachable: connection refused"
        )
        r = c.post("/v1/sessions", json={"model": PLAIN})
        assert r.status_code == 503 and r.json()["detail"]
        assert c.get("/health/live").status_code == 200
        assert c.post(f"/v1/models/{PLAIN}/predict", json={"inputs": [[[0, 0]]]}).status_code == 200
        text = c.get("/metrics").text
        assert 'peephole_session_store_errors_total{operation="create"} 1.0' in text


def test_metrics(client: httpx.Client) -> None:
    sid = client.post("/v1/sessions", json={"model": LNSC}).json()["session_id"]
    client.post(f"/v1/sessions/{sid}/steps", json={"inputs": [[0, 0, 0]]})
    client.post(f"/v1/models/{PLAIN}/predict", json={"inputs": [[[0, 0]], [[1, 1], [2, 2]]]})
    client.get("/v1/sessions/does-not-exist")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'route="/v1/sessions/{session_id}/steps",status="200"' in text
    assert 'route="/v1/sessions/{session_id}",status="404"' in text
    assert "peephole_request_duration_seconds_bucket" in text
    assert f'peephole_inference_batch_size_count{{model="{PLAIN}",version="2"}}' in text
    assert "peephole_inference_duration_seconds_sum" in text
    live = [ln for ln in text.splitlines() if ln.startswith("peephole_sessions_live ")]
    assert live and float(live[0].split()[1]) >= 1
    assert sid not in text  # raw paths never become labels


def test_capacity_429(models: RepoModels) -> None:
    settings = make_settings(models.repo, max_sessions=2, session_ttl_seconds=30)
    with LiveServer(settings) as s, s.client() as c:
        ids = [c.post("/v1/sessions", json={"model": PLAIN}).json()["session_id"] for _ in range(2)]
        r = c.post("/v1/sessions", json={"model": PLAIN})
        assert r.status_code == 429 and r.json()["detail"]
        assert 1 <= int(r.headers["Retry-After"]) <= 30
        assert c.delete(f"/v1/sessions/{ids[0]}").status_code == 204
        assert c.post("/v1/sessions", json={"model": PLAIN}).status_code == 201
        # expired sessions free their places
        r = c.post("/v1/sessions", json={"model": PLAIN})
        assert r.status_code == 429
        c.delete(f"/v1/sessions/{ids[1]}")
        assert c.post("/v1/sessions", json={"model": PLAIN, "ttl_seconds": 1}).status_code == 201
        import time

        time.sleep(1.2)
        assert c.post("/v1/sessions", json={"model": PLAIN}).status_code == 201


@pytest.fixture(scope="module")
def auth_server(models: RepoModels):  # type: ignore[no-untyped-def]
    with LiveServer(make_settings(models.repo, api_keys="k1, secret-2")) as s:
        yield s


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v1/models"),
        ("GET", f"/v1/models/{PLAIN}"),
        ("POST", f"/v1/models/{PLAIN}/predict"),
        ("POST", "/v1/sessions"),
        ("GET", "/v1/sessions/x"),
        ("DELETE", "/v1/sessions/x"),
        ("GET", "/metrics"),
        ("GET", "/docsx"),
        ("GET", "/redoc/x"),
        ("GET", "/nope"),
    ],
)
def test_auth_required(auth_server: LiveServer, method: str, path: str) -> None:
    with auth_server.client() as c:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic k1"},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer k1x"},
        ):
            r = c.request(method, path, headers=headers, json={"inputs": [[[0, 0]]]})
            assert r.status_code == 401, (headers, r.text)
            assert r.json()["detail"] and r.headers["WWW-Authenticate"] == "Bearer"


def test_auth_ok_and_open_routes(auth_server: LiveServer) -> None:
    with auth_server.client() as c:
        for key in ("k1", "secret-2"):
            h = {"Authorization": f"Bearer {key}"}
            assert c.get("/v1/models", headers=h).status_code == 200
            assert c.get("/metrics", headers=h).status_code == 200
        for path in ("/health/live", "/health/ready"):
            assert c.get(path).status_code == 200
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert c.get(path).status_code == 200
        for path in ("/ui", "/docs", "/redoc", "/openapi.json"):  # they hold no data
            assert c.get(path).status_code == 200, path


def test_websocket_auth(auth_server: LiveServer) -> None:
    with auth_server.client(headers={"Authorization": "Bearer k1"}) as c:
        sid = c.post("/v1/sessions", json={"model": LNSC}).json()["session_id"]
    url = f"{auth_server.ws_url}/v1/sessions/{sid}/stream"
    with connect(url + "?access_token=k1") as ws:
        ws.send(json.dumps({"inputs": [[0, 0, 0]]}))
        assert json.loads(ws.recv(timeout=10))["offset"] == 1
    with connect(url, additional_headers={"Authorization": "Bearer secret-2"}) as ws:
        ws.send(json.dumps({"inputs": [[0, 0, 0]]}))
        assert json.loads(ws.recv(timeout=10))["offset"] == 2
    for bad in (url, url + "?access_token=nope"):
        with connect(bad) as ws:
            r = json.loads(ws.recv(timeout=10))
            assert r["status"] == 401
            with pytest.raises(ConnectionClosed) as e:
                ws.recv(timeout=10)
            assert e.value.rcvd is not None and e.value.rcvd.code == 4401


def test_idempotency_keys_of_two_tenants_never_meet(auth_server: LiveServer) -> None:
    ids = []
    for key in ("k1", "secret-2"):
        h = {"Authorization": f"Bearer {key}", "Idempotency-Key": "same-key"}
        with auth_server.client(headers=h) as c:
            first = c.post("/v1/sessions", json={"model": LNSC}).json()["session_id"]
            assert c.post("/v1/sessions", json={"model": LNSC}).json()["session_id"] == first
            ids.append(first)
    assert ids[0] != ids[1]
