"""The retry rules one fault at a time, through the fault proxy in front of the real server:
a lost answer, an answer past the timeout, a request that arrives after its retry."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from peephole import Retry
from tests.client.conftest import KEY, MG
from tests.client.faults import FaultProxy
from tests.live import LiveServer

HOLD, TIMEOUT = 0.8, 0.4
RNG = np.random.default_rng(9)


@pytest.fixture()
def proxy(server: LiveServer) -> Iterator[FaultProxy]:
    port = int(server.url.rsplit(":", 1)[1])
    with FaultProxy(lambda: [port], hold=HOLD) as p:
        yield p


@pytest.fixture()
def faulty(connect: Any, proxy: FaultProxy) -> Any:
    return connect(proxy.url, timeout=TIMEOUT, retries=Retry(5, backoff=0.01))


def series(t: int) -> np.ndarray:
    return RNG.normal(0.9, 0.2, size=(t, 1))


def test_lost_answer_of_a_step_is_retried_and_applied_once(
    faulty: Any, client: Any, proxy: FaultProxy
) -> None:
    x = series(9)
    whole = client.predict(MG, x)
    with faulty.session(MG) as s:
        a = s.step(x[:4])
        proxy.cut_next = 1  # the server applies the next chunk; its answer never comes back
        b = s.step(x[4:])
        assert s.offset == 9 and client.attach(s.id).offset == 9  # applied once
        np.testing.assert_allclose(np.concatenate([a, b]), whole, atol=1e-5)
    assert proxy.counts["cut"] == 1 and faulty.stats.retries["connection"] == 1


def test_answer_past_the_timeout_is_retried(faulty: Any, client: Any, proxy: FaultProxy) -> None:
    x = series(5)
    whole = client.predict(MG, x)
    with faulty.session(MG) as s:
        proxy.delay_next = 1
        y = s.step(x)
        assert client.attach(s.id).offset == 5
    np.testing.assert_allclose(y, whole, atol=1e-5)
    assert faulty.stats.retries["timeout"] >= 1  # more when the box is slow: still correct


def test_a_late_duplicate_changes_nothing(faulty: Any, client: Any, proxy: FaultProxy) -> None:
    x = series(6)
    whole = client.predict(MG, x)
    with faulty.session(MG) as s:
        proxy.late_next = 1  # this request reaches the server after its retry was applied
        a = s.step(x[:2])
        b = s.step(x[2:4])  # and after this chunk too: the stale copy must be refused
        time.sleep(HOLD + 0.2)
        assert client.attach(s.id).offset == 4
        c = s.step(x[4:])
        assert s.offset == 6 and client.attach(s.id).offset == 6
    np.testing.assert_allclose(np.concatenate([a, b, c]), whole, atol=1e-5)
    assert proxy.counts["late"] == 1


def test_stream_resumes_after_a_cut(faulty: Any, client: Any, proxy: FaultProxy) -> None:
    x = series(12)
    whole = client.predict(MG, x)
    with faulty.session(MG) as s:
        chunks = s.stream(np.split(x, 4))
        outs = [next(chunks)]
        proxy.cut_next = 1  # the answer to the second chunk: the socket dies after it applied
        outs += list(chunks)
        assert s.offset == 12 and client.attach(s.id).offset == 12
    np.testing.assert_allclose(np.concatenate(outs), whole, atol=1e-5)
    assert faulty.stats.retries["closed"] == 1 and faulty.stats.reconnects >= 1


def test_stream_resumes_after_a_timeout(faulty: Any, client: Any, proxy: FaultProxy) -> None:
    x = series(6)
    whole = client.predict(MG, x)
    with faulty.session(MG) as s:
        chunks = s.stream(np.split(x, 3))
        outs = [next(chunks)]
        proxy.delay_next = 1
        outs += list(chunks)
        assert client.attach(s.id).offset == 6
    np.testing.assert_allclose(np.concatenate(outs), whole, atol=1e-5)
    assert faulty.stats.retries["timeout"] >= 1  # more when the box is slow: still correct


def _idempotency_keys(proxy: FaultProxy) -> list[str]:
    text = b"".join(proxy.sent).decode("latin-1")
    return re.findall(
        r"POST /v1/sessions HTTP.*?\r\nidempotency-key: ([0-9a-f-]+)", text, re.I | re.S
    )


def live_sessions(server: LiveServer) -> int:
    with server.client(headers={"Authorization": f"Bearer {KEY}"}) as h:
        text = h.get("/metrics").text
    return int(float(re.search(r"^peephole_sessions_live (\S+)$", text, re.M).group(1)))


def test_a_retried_create_gets_the_session_its_first_attempt_opened(
    faulty: Any, proxy: FaultProxy, server: LiveServer
) -> None:
    before = live_sessions(server)
    proxy.record = True
    proxy.cut_next = 1  # the server opens the session; the answer is lost
    with faulty.session(MG) as s:
        assert s.offset == 0 and faulty.stats.retries["connection"] == 1
        assert live_sessions(server) == before + 1  # the retry did not open a second one
        with faulty.session(MG):
            assert live_sessions(server) == before + 2
    # the retry sent the key of the first attempt, the other session a key of its own (a
    # loaded box may add retries past the 0.4 s timeout: each repeats its create's key)
    keys = _idempotency_keys(proxy)
    first, other = dict.fromkeys(keys)
    assert keys[:2] == [first, first] and other == keys[-1]


def test_a_retried_delete_is_done(faulty: Any, client: Any, proxy: FaultProxy) -> None:
    s = faulty.session(MG)
    proxy.cut_next = 1  # the server deletes; the retry then meets 404, which means done
    s.delete()
    with pytest.raises(Exception, match="unknown or expired"):
        client.attach(s.id)
