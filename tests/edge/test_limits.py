"""What a request or a connection may cost, on the production transport over loopback.

Raw sockets play the clients httpx will not be: headers that never end, a body that stops
or is cut short, more connections than allowed. Each case checks the answer, that nothing
was applied, and that the server keeps answering others.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from app.api.grpc._proto import grpc_service_pb2 as pb
from app.api.grpc._proto import grpc_service_pb2_grpc as pb_grpc
from tests.live import LiveServer, free_port, make_settings
from tests.repo import LNSC, PLAIN, RepoModels, new_session

# header, body and idle timeouts of the server under test: short, so the tests that wait for
# them stay quick, and still long beside the pauses of a loaded box between two lines here
TIMEOUT = 1.0


@pytest.fixture(scope="module")
def edge(models: RepoModels) -> Iterator[LiveServer]:
    settings = make_settings(
        models.repo,
        max_header_bytes=4096,
        header_timeout_seconds=TIMEOUT,
        body_timeout_seconds=TIMEOUT,
        keepalive_seconds=TIMEOUT,
        max_connections=12,
        max_body_bytes=1 << 20,
        max_inflight_bytes=1 << 20,
        max_response_bytes=200_000,
        grpc_port=free_port(),
    )
    with LiveServer(settings, transport="production") as s:
        yield s


def connect(server: LiveServer) -> socket.socket:
    port = int(server.url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def status_and_body(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else None


def request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def offset(server: LiveServer, sid: str) -> int:
    with server.client() as c:
        return int(c.get(f"/v1/sessions/{sid}").json()["offset"])


def live(server: LiveServer) -> None:
    with server.client() as c:
        assert c.get("/health/live").status_code == 200


def test_header_size_limit(edge: LiveServer) -> None:
    with connect(edge) as s:
        s.sendall(request("GET", "/health/live", X_Big="a" * 10_000))
        status, body = status_and_body(read_all(s))
    assert status == 431 and "4096" in body["detail"]
    live(edge)


def test_headers_that_never_end_time_out(edge: LiveServer) -> None:
    with connect(edge) as s:
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: test\r\n")
        t0 = time.monotonic()
        status, body = status_and_body(read_all(s))
    assert status == 408 and "headers" in body["detail"]
    assert time.monotonic() - t0 < 10 * TIMEOUT


def test_an_idle_connection_is_closed_before_any_request(edge: LiveServer) -> None:
    with connect(edge) as s:
        assert read_all(s) == b""  # closed by the server, nothing said


@pytest.mark.parametrize("fast", [True, False], ids=["steps", "create"])
def test_a_stalled_body_is_408_and_applies_nothing(edge: LiveServer, fast: bool) -> None:
    with edge.client() as c:
        sid = new_session(c, LNSC)
    body = json.dumps({"inputs": [[0.1, 0.2, 0.3]]} if fast else {"model": LNSC}).encode()
    path = f"/v1/sessions/{sid}/steps" if fast else "/v1/sessions"
    with connect(edge) as s:
        s.sendall(request("POST", path, body[:10], Content_Length=str(len(body))))
        status, reply = status_and_body(read_all(s))
    assert status == 408 and "body" in reply["detail"]
    assert offset(edge, sid) == 0


def _live_sessions(server: LiveServer) -> float:
    with server.client() as c:
        text = c.get("/metrics").text
    line = next(ln for ln in text.splitlines() if ln.startswith("peephole_sessions_live "))
    return float(line.split()[1])


@pytest.mark.parametrize(
    "route", ["steps", "predict", "create", "v2 sequence"], ids=lambda r: r.replace(" ", "-")
)
def test_a_body_cut_short_is_never_applied(
    edge: LiveServer, route: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The client sends part of its declared body, then half-closes: nothing applied, and
    the server logs a client error, not a traceback. The last case sends a whole JSON body
    under a Content-Length five bytes longer: valid JSON, still not what was declared."""
    with edge.client() as c:
        sid = new_session(c, LNSC)
    bodies = {
        "steps": (f"/v1/sessions/{sid}/steps", {"inputs": [[0.1, 0.2, 0.3]], "offset": 0}),
        "predict": (f"/v1/models/{PLAIN}/predict", {"inputs": [[[0.1, 0.2]]]}),
        "create": ("/v1/sessions", {"model": LNSC}),
        "v2 sequence": (
            f"/v2/models/{LNSC}/infer",
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 3],
                         "data": [0.1, 0.2, 0.3]}],
             "parameters": {"sequence_id": 77, "sequence_start": True}},
        ),
    }  # fmt: skip
    path, doc = bodies[route]
    body = json.dumps(doc).encode()
    sessions = _live_sessions(edge)
    caplog.set_level(logging.INFO)
    for sent, declared in ((len(body) // 2, len(body)), (len(body), len(body) + 5)):
        with connect(edge) as s:
            s.sendall(request("POST", path, body[:sent], Content_Length=str(declared)))
            s.shutdown(socket.SHUT_WR)
            assert read_all(s) == b""  # nobody is left to answer
    deadline = time.monotonic() + 30  # the app logs each one once it has seen the client go
    while sum("nothing applied" in r.getMessage() for r in caplog.records) < 2:
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.02)
    assert offset(edge, sid) == 0 and _live_sessions(edge) == sessions
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_body_longer_than_declared_is_not_applied(edge: LiveServer) -> None:
    with edge.client() as c:
        sid = new_session(c, LNSC)
    body = json.dumps({"inputs": [[0.1, 0.2, 0.3]]}).encode()
    with connect(edge) as s:
        s.sendall(request("POST", f"/v1/sessions/{sid}/steps", body, Content_Length="10"))
        raw = read_all(s)
    # the 10 declared bytes are no JSON (422), the rest no request (uvicorn: 400 and close)
    assert raw.startswith((b"HTTP/1.1 422 ", b"HTTP/1.1 400 ")), raw[:200]
    assert offset(edge, sid) == 0


def test_connections_are_bounded(edge: LiveServer) -> None:
    time.sleep(2 * TIMEOUT)  # the keep-alive connections of earlier tests are gone
    held = [connect(edge) for _ in range(edge.settings.max_connections)]
    try:
        time.sleep(0.1)
        with connect(edge) as s:
            status, body = status_and_body(read_all(s))
        assert status == 503 and "connections" in body["detail"]
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 30  # room again once the server has seen them close
    with edge.client() as c:
        while (r := c.get("/health/live")).status_code == 503:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
        assert r.status_code == 200


def test_large_bodies_at_once_are_bounded(edge: LiveServer) -> None:
    """Two large bodies of 600 kB against a budget of 1 MiB: the second is 503 with
    Retry-After while the first is still arriving; small requests pass meanwhile."""
    doc = {"inputs": [[[0.25, 0.5]] * 48_000]}
    body = json.dumps(doc).encode()
    assert 600_000 < len(body) < 1 << 20
    with connect(edge) as first:
        first.sendall(request("POST", f"/v1/models/{PLAIN}/predict", body[:-40],
                              Content_Length=str(len(body))))  # fmt: skip
        with Trickle(first, body[-40:]), edge.client() as c:
            deadline = time.monotonic() + 30
            while (r := c.post(f"/v1/models/{PLAIN}/predict", content=body)).status_code != 503:
                # the server has not read a byte of the first yet: this one ran (too large)
                assert r.status_code == 413 and time.monotonic() < deadline, r.text
            assert r.headers["retry-after"] == "1"
            assert c.post(f"/v1/models/{PLAIN}/predict", json={"inputs": [[[1, 2]]]}).is_success
        status, reply = status_and_body(_one_response(first))
    assert status == 413  # 48,000 steps answered would pass the response limit of the server
    with edge.client() as c:  # the budget is free again
        assert c.post(f"/v1/models/{PLAIN}/predict", content=body).status_code == 413


class Trickle:
    """Sends `rest` one byte every TIMEOUT / 4 (the body is slow, never stalled, however
    long a loaded box takes meanwhile), keeping the last byte until the `with` ends."""

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock, self.rest, self.done = sock, bytearray(rest), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.wait(TIMEOUT / 4) and len(self.rest) > 1:
            self.sock.sendall(self.rest[:1])
            del self.rest[:1]

    def __enter__(self) -> Trickle:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.sock.sendall(bytes(self.rest))


def _one_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n")
                      if ln.lower().startswith(b"content-length")))  # fmt: skip
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


def test_other_clients_are_served_while_one_stalls(edge: LiveServer) -> None:
    stalled = [connect(edge) for _ in range(4)]
    for s in stalled:
        s.sendall(b"POST /v1/sessions HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
    try:
        done = threading.Event()

        def probe() -> None:
            with edge.client() as c:
                for _ in range(20):
                    assert c.get("/health/live").status_code == 200
            done.set()

        t = threading.Thread(target=probe)
        t.start()
        t.join(timeout=30)
        assert done.is_set()
    finally:
        for s in stalled:
            s.close()


@pytest.mark.parametrize(
    ("content_type", "status"),
    [("text/plain", 415), ("application/x-www-form-urlencoded", 415),
     ("multipart/form-data; boundary=x", 415), ("application/json; charset=utf-8", 201),
     ("application/vnd.api+json", 201), (None, 201)],
)  # fmt: skip
def test_v1_bodies_must_be_json(edge: LiveServer, content_type: str | None, status: int) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = json.dumps({"model": LNSC}).encode()
    with edge.client() as c:
        r = c.post("/v1/sessions", content=body, headers=headers)
        assert r.status_code == status, r.text
        sid = new_session(c, LNSC)
        steps = c.post(f"/v1/sessions/{sid}/steps", content=b'{"inputs": [[1, 2, 3]]}',
                       headers=headers)  # fmt: skip
        assert steps.status_code == (200 if status == 201 else 415)
        if status == 415:
            assert "application/json" in r.json()["detail"]
            assert c.post(f"/v1/sessions/{sid}/reset", headers=headers).status_code == 415
            assert offset(edge, sid) == 0


def test_v2_takes_what_triton_clients_send(edge: LiveServer) -> None:
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 2], "data": [1, 2]}]}
    with edge.client() as c:
        for kind in ("application/octet-stream", "text/plain", None):
            headers = {"content-type": kind} if kind else {}
            r = c.post(f"/v2/models/{PLAIN}/infer", content=json.dumps(doc), headers=headers)
            assert r.status_code == 200, r.text


def test_response_size_is_checked_before_running(edge: LiveServer) -> None:
    steps = [[0.1, 0.2, 0.3]] * 2000  # with internals: 2000 x (2 x 4 cells + 3 x 2 blocks)
    with edge.client() as c:
        r = c.post(f"/v1/models/{LNSC}/predict", json={"inputs": [steps], "return_internals": True})
        assert r.status_code == 413 and "PEEPHOLE_MAX_RESPONSE_BYTES" in r.json()["detail"]
        ok = c.post(f"/v1/models/{LNSC}/predict", json={"inputs": [steps],
                                                         "return_sequences": False})  # fmt: skip
        assert ok.status_code == 200
        sid = new_session(c, LNSC)
        r = c.post(f"/v1/sessions/{sid}/steps", json={"inputs": steps, "return_internals": True})
        assert r.status_code == 413 and offset(edge, sid) == 0
        v2 = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 20000, 3],
                          "parameters": {"binary_data_size": 240000}}]}  # fmt: skip
        head = json.dumps(v2).encode()
        r = c.post(f"/v2/models/{LNSC}/infer", content=head + bytes(240000),
                   headers={"Inference-Header-Content-Length": str(len(head))})  # fmt: skip
        assert r.status_code == 413 and "PEEPHOLE_MAX_RESPONSE_BYTES" in r.json()["error"]
    # gRPC sends raw bytes, 4 a number: 20,000 steps of 2 outputs fit, 30,000 do not
    assert edge.grpc_target is not None
    with grpc.insecure_channel(edge.grpc_target) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        for outputs in ([], ["y"]):  # every output, or those asked for
            assert infer(grpc_request(np.zeros((1, 20_000, 3), np.float32), outputs)).outputs
        with pytest.raises(grpc.RpcError) as e:
            infer(grpc_request(np.zeros((1, 30_000, 3), np.float32)))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "PEEPHOLE_MAX_RESPONSE_BYTES" in (e.value.details() or "")


def grpc_request(x: np.ndarray, outputs: list[str] | None = None) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name=LNSC)
    r.inputs.add(name="x", datatype="FP32", shape=x.shape)
    for name in outputs or []:
        r.outputs.add(name=name)
    r.raw_input_contents.append(x.astype("<f4").tobytes())
    return r


def test_allow_on_405_and_options(edge: LiveServer) -> None:
    with edge.client() as c:
        sid = new_session(c, LNSC)
        r = c.put(f"/v1/sessions/{sid}")
        assert r.status_code == 405
        assert r.headers["allow"] == "DELETE, GET, OPTIONS"
        r = c.options(f"/v1/sessions/{sid}")
        assert r.status_code == 204 and r.headers["allow"] == "DELETE, GET, OPTIONS"
        r = c.options(f"/v1/models/{PLAIN}/predict")
        assert r.status_code == 204 and r.headers["allow"] == "OPTIONS, POST"
        assert c.options("/nope").status_code == 404


def test_small_limits_leave_normal_use_alone(edge: LiveServer) -> None:
    """Keep-alive across requests within the idle timeout, and a client that pauses
    between requests for less than it."""
    with httpx.Client(base_url=edge.url, timeout=10) as c:
        for _ in range(3):
            assert c.get("/health/live").status_code == 200
            time.sleep(TIMEOUT / 3)
