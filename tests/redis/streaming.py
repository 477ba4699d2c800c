"""Many sessions streamed at once through several replicas, each step retried until it is
acknowledged, with every attempt's time kept, so a failover test can check exactly-once and
measure what a client saw.

The retry rule is the server's exactly-once rule: the same offset and the same inputs, on
any replica, until a 200. (The `peephole` client package does the same in its retries; this
small loop keeps the test independent of it.) Anything but 200 or a transient failure (a
transport error, 502/503) fails the run: a 409 here would mean a step was lost or doubled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

TRANSIENT = {502, 503, 504}


@dataclass
class Attempt:
    session: int
    start: float
    end: float
    ok: bool
    why: str = ""


@dataclass
class Run:
    ids: list[str] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)  # steps acknowledged per session
    outputs: list[list[np.ndarray]] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)

    def failures(self) -> list[Attempt]:
        return [a for a in self.attempts if not a.ok]

    def window(self, since: float) -> tuple[float, float]:
        """(client-visible unavailability: `since` (e.g. the kill) -> the success that ended
        the last failure streak, the longest stall of one session: its first failed attempt
        -> its next success), in seconds; (0, 0) if nothing failed."""
        ends, longest = [since], 0.0
        for s in {a.session for a in self.failures()}:
            streak = None
            for a in sorted((a for a in self.attempts if a.session == s), key=lambda a: a.start):
                if not a.ok and streak is None:
                    streak = a.start
                elif a.ok and streak is not None:
                    ends.append(a.end)
                    longest = max(longest, a.end - streak)
                    streak = None
        return max(ends) - since, longest


async def _post(
    run: Run, i: int, clients: list[httpx.AsyncClient], pick: int, path: str, body: dict,
    deadline: float,
) -> dict:  # fmt: skip
    while True:
        c = clients[pick % len(clients)]
        pick += 1  # a retry goes to the other replica, as behind a load balancer
        t = time.monotonic()
        try:
            r = await c.post(path, json=body)
        except httpx.TransportError as e:
            run.attempts.append(Attempt(i, t, time.monotonic(), False, type(e).__name__))
        else:
            if r.status_code in (200, 201):
                run.attempts.append(Attempt(i, t, time.monotonic(), True))
                return dict(r.json())
            if r.status_code not in TRANSIENT:
                raise AssertionError(f"session {i}: {path} -> {r.status_code} {r.text}")
            run.attempts.append(
                Attempt(i, t, time.monotonic(), False, f"{r.status_code} {r.text[:60]}")
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"session {i}: no answer to {path} before the deadline")
        await asyncio.sleep(0.02)


async def stream_many(
    urls: list[str],
    model: str,
    sequences: list[np.ndarray],
    chunk_sizes: list[list[int]],
    progress: Callable[[int], None] = lambda n: None,
    seconds: float = 60,
) -> Run:
    """Create one session per sequence and stream its chunks, all sessions concurrently;
    `progress(total steps acknowledged)` is called after every acknowledged step."""
    deadline = time.monotonic() + seconds
    run = Run()
    n = len(sequences)
    run.ids, run.acked, run.outputs = [""] * n, [0] * n, [[] for _ in range(n)]
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    clients = [httpx.AsyncClient(base_url=u, timeout=10, limits=limits) for u in urls]
    total = 0

    async def one(i: int) -> None:
        nonlocal total
        made = await _post(run, i, clients, i, "/v1/sessions", {"model": model}, deadline)
        sid = run.ids[i] = made["session_id"]
        offset = 0
        for k, size in enumerate(chunk_sizes[i]):
            chunk = sequences[i][offset : offset + size]
            body = {"inputs": chunk.tolist(), "offset": offset}
            r = await _post(run, i, clients, i + k, f"/v1/sessions/{sid}/steps", body, deadline)
            assert r["offset"] == offset + size, r
            run.outputs[i].append(np.asarray(r["outputs"], np.float32))
            offset = run.acked[i] = offset + size
            total += size
            progress(total)

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        for c in clients:
            await c.aclose()
    return run


def check_exactly_once(
    client: httpx.Client, model: str, run: Run, sequences: list[np.ndarray]
) -> None:
    """Every session's offset is the steps acknowledged, and the acknowledged outputs are a
    whole-sequence predict of the same inputs (within 1e-5)."""
    lost = doubled = 0
    for i, sid in enumerate(run.ids):
        r = client.get(f"/v1/sessions/{sid}")
        assert r.status_code == 200, r.text
        offset = r.json()["offset"]
        lost += offset < run.acked[i]
        doubled += offset > run.acked[i]
    assert (lost, doubled) == (0, 0), f"{lost} sessions lost steps, {doubled} doubled some"
    body = {"inputs": [s[: run.acked[i]].tolist() for i, s in enumerate(sequences)]}
    r = client.post(f"/v1/models/{model}/predict", json=body)
    assert r.status_code == 200, r.text
    for i, whole in enumerate(r.json()["outputs"]):
        np.testing.assert_allclose(np.concatenate(run.outputs[i]), whole, atol=1e-5)
