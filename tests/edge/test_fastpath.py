"""The fast path (app/edge/fastpath.py) answers exactly as the FastAPI routes do.

Every request below is sent twice to one live server: once through the fast path and once
with it switched off (`app.fast_path = None`, so FastAPI's routes and middlewares answer).
Status, body and the headers a client may rely on must be identical.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.middleware.cors import CORSMiddleware

from app.edge.fastpath import HONOURS
from app.main import PeepholeAPI, create_app
from tests.live import LiveServer, make_settings
from tests.repo import LNSC, PLAIN, RepoModels

Case = tuple[str, str, Any, dict[str, str]]  # method, path, body (bytes or JSON), headers


@pytest.fixture(scope="module")
def live(models: RepoModels) -> Iterator[LiveServer]:
    settings = make_settings(models.repo, max_batch_size=4, max_steps=50, max_body_bytes=4096)
    with LiveServer(settings) as s:
        yield s


@pytest.fixture(scope="module")
def keyed(models: RepoModels) -> Iterator[LiveServer]:
    with LiveServer(make_settings(models.repo, api_keys="k1")) as s:
        yield s


def _send(c: httpx.Client, case: Case) -> httpx.Response:
    method, path, body, headers = case
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return c.request(method, path, content=content,
                     headers={"content-type": "application/json", **headers})  # fmt: skip


def _both(server: LiveServer, case: Case) -> tuple[httpx.Response, httpx.Response]:
    app = server.app
    assert isinstance(app, PeepholeAPI) and app.fast_path is not None
    fast = app.fast_path
    with server.client() as c:
        a = _send(c, case)
        app.fast_path = None
        try:
            b = _send(c, case)
        finally:
            app.fast_path = fast
    return a, b


def _same(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code, (a.text, b.text)
    assert a.json() == b.json()
    for h in ("content-type", "www-authenticate", "retry-after", "connection"):
        assert a.headers.get(h) == b.headers.get(h), h


def _session(server: LiveServer, model: str = LNSC) -> str:
    with server.client() as c:
        return str(c.post("/v1/sessions", json={"model": model}).json()["session_id"])


PREDICT = f"/v1/models/{PLAIN}/predict"
PREDICT_CASES: list[Any] = [
    {"inputs": [[[0.1, 0.2], [0.3, 0.4]], [[0.5, 0.6]]]},
    {"inputs": [[[0.1, 0.2]]], "return_sequences": False, "return_state": True},
    {"inputs": [[[0.1, 0.2]]], "state": [None]},
    {"inputs": [[[0.1, 0.2]]], "return_internals": True},
    {"inputs": [[[0.1]]]},
    {"inputs": [[[True, 0.2]]]},
    {"inputs": [[["1.5", 0.2]]]},
    {"inputs": [[[1e39, 0.2]]]},
    {"inputs": []},
    {"inputs": [[]]},
    {"inputs": [[[0.1, 0.2]]] * 5},
    {"inputs": [[[0.1, 0.2]] * 51]},
    {"inputs": [[[0.1, 0.2]]], "extra": 1},
    {"inputs": [[[0.1, 0.2]]], "return_state": 1},
    {"inputs": [[[0.1, 0.2]]], "state": [{"cell_states": [0, 0, 0]}]},
    {"nothing": True},
    [1, 2],
    b"",
    b"{not json",
    b'{"inputs": [[[NaN, 0]]]}',
    b"x" * 5000,
]


@pytest.mark.parametrize("body", PREDICT_CASES, ids=range(len(PREDICT_CASES)))
def test_predict_same_answers(live: LiveServer, body: Any) -> None:
    _same(*_both(live, ("POST", PREDICT, body, {})))


@pytest.mark.parametrize("path", [f"/v1/models/{PLAIN}/versions/2/predict",
                                  f"/v1/models/{PLAIN}/versions/9/predict",
                                  f"/v1/models/{PLAIN}/versions/x/predict",
                                  "/v1/models/nope/predict", "/v1/models/bad-sha/predict"])  # fmt: skip
def test_predict_routes_same_answers(live: LiveServer, path: str) -> None:
    _same(*_both(live, ("POST", path, {"inputs": [[[0.1, 0.2]]]}, {})))


STEP_CASES: list[Any] = [
    {"inputs": [[0.1, 0.2, 0.3]]},
    {"inputs": [[0.1, 0.2, 0.3]], "return_internals": True},
    {"inputs": [[0.1, 0.2]]},
    {"inputs": []},
    {"inputs": [[0.1, 0.2, 0.3]] * 51},
    {"inputs": [[0.1, 0.2, 0.3]], "offset": 10_000},
    {"inputs": [[0.1, 0.2, 0.3]], "offset": -1},
    {"inputs": [[0.1, 0.2, True]]},
    {"inputs": [[0.1, 0.2, 0.3]], "offset": True},
    b"[]",
    b"{",
]


@pytest.mark.parametrize("body", STEP_CASES, ids=range(len(STEP_CASES)))
def test_steps_same_answers(live: LiveServer, body: Any) -> None:
    # one session per path, so both see the session in the same state
    a_sid, b_sid = _session(live), _session(live)
    app = live.app
    fast = app.fast_path
    with live.client() as c:
        a = _send(c, ("POST", f"/v1/sessions/{a_sid}/steps", body, {}))
        app.fast_path = None
        try:
            b = _send(c, ("POST", f"/v1/sessions/{b_sid}/steps", body, {}))
        finally:
            app.fast_path = fast
    assert a.status_code == b.status_code, (a.text, b.text)
    ja, jb = a.json(), b.json()
    ja.pop("session_id", None), jb.pop("session_id", None)
    assert ja == jb


def test_steps_retry_and_unknown_session(live: LiveServer) -> None:
    for sid in ("0" * 32, "no-such-session"):
        _same(*_both(live, ("POST", f"/v1/sessions/{sid}/steps", {"inputs": [[1, 2, 3]]}, {})))
    sid = _session(live)
    body = {"inputs": [[0.1, 0.2, 0.3]], "offset": 0}
    a, b = _both(live, ("POST", f"/v1/sessions/{sid}/steps", body, {}))  # applied, then retried
    assert a.status_code == b.status_code == 200 and a.json() == b.json()
    a, b = _both(live, ("POST", f"/v1/sessions/{sid}/steps", {**body, "offset": 5}, {}))
    _same(a, b)
    assert a.status_code == 409 and a.json()["offset"] == 1


def test_body_limit_streamed_and_declared(live: LiveServer) -> None:
    big = json.dumps({"inputs": [[[0.1, 0.2]]] * 400}).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    with live.client() as c:
        r = c.post(PREDICT, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.headers.get("connection") == "close"
    _same(*_both(live, ("POST", PREDICT, big, {})))


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "k1"},
                                     {"Authorization": "Bearer k1"}])  # fmt: skip
def test_auth_same_answers(keyed: LiveServer, headers: dict[str, str]) -> None:
    _same(*_both(keyed, ("POST", PREDICT, {"inputs": [[[0.1, 0.2]]]}, headers)))
    _same(*_both(keyed, ("POST", "/v1/sessions/x/steps", {"inputs": [[0.1]]}, headers)))


def test_metrics_count_fast_path_by_template(live: LiveServer) -> None:
    sid = _session(live)
    with live.client() as c:
        assert c.post(PREDICT, json={"inputs": [[[0.1, 0.2]]]}).status_code == 200
        assert c.post(f"/v1/sessions/{sid}/steps", json={"inputs": [[1, 2, 3]]}).status_code == 200
        text = c.get("/metrics").text
    assert 'route="/v1/models/{name}/predict",status="200"' in text
    assert 'route="/v1/sessions/{session_id}/steps",status="200"' in text
    assert sid not in text


def test_every_middleware_of_the_app_is_honoured(models: RepoModels) -> None:
    """A middleware added to create_app must be taught to the fast path (HONOURS), else this
    fails: the fast path would otherwise switch itself off and the hot routes get slower."""
    app = create_app(make_settings(models.repo))
    added = [m.cls for m in app.user_middleware]
    assert added and all(cls in HONOURS for cls in added), added
    app.middleware_stack = app.build_middleware_stack()
    assert isinstance(app, PeepholeAPI) and app.fast_path is not None


def test_a_foreign_middleware_turns_the_fast_path_off(models: RepoModels) -> None:
    """CORS added by an embedding app: the hot routes then go through FastAPI, CORS included."""
    server = LiveServer(make_settings(models.repo))
    server.app.add_middleware(CORSMiddleware, allow_origins=["*"])
    with server, server.client() as c:
        r = c.post(PREDICT, json={"inputs": [[[0.1, 0.2]]]}, headers={"Origin": "http://x.test"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
        assert isinstance(server.app, PeepholeAPI) and server.app.fast_path is None
