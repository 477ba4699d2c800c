"""A WebSocket step in flight at shutdown gets its answer before the socket closes (1012).

The step is made slow (a long chunk) so that the server is told to stop while the step
runs; without the graceful protocol the close comes first and the applied step's outputs
are lost to the client.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from app.edge.websocket import GracefulWebSocketProtocol
from tests.live import LiveServer, make_settings
from tests.repo import LNSC, RepoModels, new_session

STEPS = 60_000  # about a second of the lnsc Scan graph here


def wait_until_the_app_holds_a_message(server: LiveServer) -> None:
    """Until the app has taken the message from a socket and not answered it yet (a loaded
    box may take longer than any fixed pause to read and parse it)."""
    deadline = time.monotonic() + 30
    while not any(
        getattr(conn, "_unanswered", 0) > 0 for conn in server.server.server_state.connections
    ):
        assert time.monotonic() < deadline, "the step never reached the app"
        time.sleep(0.005)


def test_step_in_flight_at_shutdown_is_answered(models: RepoModels) -> None:
    settings = make_settings(models.repo, max_steps=STEPS, max_body_bytes=8_000_000)
    server = LiveServer(
        settings, uvicorn_options={"ws": GracefulWebSocketProtocol, "timeout_graceful_shutdown": 20}
    )
    x = np.random.default_rng(0).normal(size=(STEPS, 3)).round(3).tolist()
    with server:
        with server.client() as c:
            sid = new_session(c, LNSC)
            warm = c.post(f"/v1/sessions/{sid}/steps", json={"inputs": x[:10]})
            assert warm.status_code == 200
        with connect(f"{server.ws_url}/v1/sessions/{sid}/stream", max_size=None) as ws:
            ws.send(json.dumps({"inputs": x, "offset": 10}))
            wait_until_the_app_holds_a_message(server)  # the step is running now
            server.server.should_exit = True
            answer = json.loads(ws.recv(timeout=30))
            assert answer.get("offset") == 10 + STEPS, str(answer)[:200]
            assert len(answer["outputs"]) == STEPS
            with pytest.raises(ConnectionClosed) as closed:
                ws.send(json.dumps({"inputs": x[:1], "offset": 10 + STEPS}))
                ws.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
