"""bench/ws_client.py, the lean WebSocket load client, against the real server: its answers
are the `websockets` client's byte for byte, its framing holds for every length encoding,
and a load run counts steps with exactly-once offsets."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvloop
from websockets.sync.client import connect

from tests.live import LiveServer, make_settings
from tests.repo import LNSC, RepoModels, get_state, new_session

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import ws_client  # noqa: E402

rng = np.random.default_rng(19)


@pytest.fixture(scope="module")
def server(models: RepoModels) -> Iterator[LiveServer]:
    """`python -m app`'s transport (its WebSocket protocol included)."""
    settings = make_settings(models.repo, max_steps=2000, max_body_bytes=200_000)
    with LiveServer(settings, transport="production") as s:
        yield s


@pytest.fixture()
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def reference(server: LiveServer, sid: str, message: str, n: int) -> list[str]:
    with connect(f"{server.ws_url}/v1/sessions/{sid}/stream", compression=None) as ws:
        out = []
        for _ in range(n):
            ws.send(message)
            got = ws.recv(timeout=10)
            assert isinstance(got, str)
            out.append(got)
        return out


@pytest.mark.parametrize("steps", [1, 80])  # answers of 7-bit and of 16-bit frame lengths
def test_answers_equal_the_websockets_clients(server: LiveServer, client: httpx.Client,
                                              steps: int) -> None:  # fmt: skip
    message = json.dumps({"inputs": rng.normal(size=(steps, 3)).round(4).tolist()})
    lean, ref = new_session(client, LNSC), new_session(client, LNSC)
    got = asyncio.run(ws_client.steps(f"{server.ws_url}/v1/sessions/{lean}/stream",
                                      message.encode(), 6))  # fmt: skip
    want = reference(server, ref, message, 6)
    assert [g.decode().replace(lean, ref) for g in got] == want
    assert [ws_client.offset_of(g) for g in got] == [steps * (i + 1) for i in range(6)]
    assert get_state(client, lean)["offset"] == 6 * steps
    if steps > 1:
        assert len(got[0]) > 125


def test_load_counts_steps_exactly_once(server: LiveServer, client: httpx.Client) -> None:
    """On uvloop, as the bench runs it."""
    ids = [new_session(client, LNSC) for _ in range(4)]
    urls = [f"{server.ws_url}/v1/sessions/{sid}/stream" for sid in ids]
    out = uvloop.run(ws_client.load(urls, b'{"inputs": [[0.1, 0.2, 0.3]]}', 0.2, 0.5))
    assert out["ok"] > 0 and out["errors"] == 0 and out["bad_offsets"] == 0
    assert 0 < out["p50_ms"] <= out["p99_ms"]
    applied = sum(get_state(client, sid)["offset"] for sid in ids)
    assert applied >= out["ok"]  # warm-up steps too, every one answered once


def test_an_unknown_session_fails_the_run(server: LiveServer) -> None:
    url = f"{server.ws_url}/v1/sessions/nope/stream"
    with pytest.raises(ConnectionError, match="closed by the server"):
        asyncio.run(ws_client.steps(url, b'{"inputs": [[0.1, 0.2, 0.3]]}', 3))


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 70_000])
def test_frames_round_trip_byte_by_byte(size: int) -> None:
    """Every length encoding, masked (our frames) and not (the server's), split anywhere."""
    payload = bytes(rng.integers(0, 256, size, dtype=np.uint8))
    masked = ws_client.frame(payload)
    plain = _unmasked(payload)
    for wire in (masked, plain, plain + masked):
        buf, got = bytearray(), []
        step = max(1, len(wire) // 50)
        for i in range(0, len(wire), step):
            buf += wire[i : i + step]
            got += ws_client.parse_frames(buf)
        assert [p for _, _, p in got] == [payload] * (2 if len(wire) > len(masked) else 1)
        assert all(fin and op == ws_client.TEXT for fin, op, _ in got) and not buf


def _unmasked(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def test_offset_of() -> None:
    assert ws_client.offset_of(b'{"session_id":"a","offset":12,"outputs":[]}') == 12
    assert ws_client.offset_of(b'{"offset": 7}') == 7
    assert ws_client.offset_of(b'{"detail":"x","status":422}') is None
