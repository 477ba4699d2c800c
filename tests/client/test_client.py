"""Every method and error of Client and AsyncClient against a real server on a loopback port.

References are independent of the client: the raw HTTP API through httpx, and one
whole-sequence predict for anything fed in chunks.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest

from peephole import (
    AsyncClient,
    CapacityReached,
    InvalidInput,
    ModelNotFound,
    OffsetConflict,
    PayloadTooLarge,
    Prediction,
    Retry,
    SessionNotFound,
    Step,
    Unauthorized,
    Unavailable,
)
from tests.client.conftest import FAST, KEY, MG, TC
from tests.live import LiveServer, free_port, make_settings

RNG = np.random.default_rng(5)


def series(t: int, features: int = 1) -> np.ndarray:
    return RNG.normal(0.9, 0.2, size=(t, features))


def raw_predict(server: LiveServer, name: str, seqs: list[np.ndarray], **body: Any) -> Any:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as h:
        r = h.post(
            f"/v1/models/{name}/predict", json={"inputs": [x.tolist() for x in seqs], **body}
        )
    assert r.status_code == 200, r.text
    return r.json()


# -- models -----------------------------------------------------------------------------------


def test_models_and_cards(client: Any) -> None:
    models = {m["name"]: m for m in client.models()}
    assert models[MG]["versions"] == [1, 2] and models[MG]["default_version"] == 2
    assert TC in models
    card = client.model(MG)
    assert card["version"] == 2 and card["input_size"] == 1 and card["provider"]
    assert client.model(MG, 1)["version"] == 1


def test_unknown_model_or_version(client: Any) -> None:
    with pytest.raises(ModelNotFound) as e:
        client.model("no-such-model")
    assert e.value.status_code == 404 and "no-such-model" in e.value.detail
    with pytest.raises(ModelNotFound):
        client.model(MG, 9)
    with pytest.raises(ModelNotFound):
        client.predict("no-such-model", series(3))
    with pytest.raises(ModelNotFound):
        client.session("no-such-model")


# -- predict ----------------------------------------------------------------------------------


def test_predict_one_sequence_equals_the_raw_api(client: Any, server: LiveServer) -> None:
    x = series(20)
    y = client.predict(MG, x)
    assert isinstance(y, np.ndarray) and y.shape == (20, 1)
    np.testing.assert_array_equal(
        y, np.asarray(raw_predict(server, MG, [x])["outputs"][0], np.float32)
    )


def test_predict_ragged_and_stacked_batches(client: Any, server: LiveServer) -> None:
    seqs = [series(5), series(12), series(1)]
    ys = client.predict(MG, seqs)
    assert isinstance(ys, list) and [y.shape for y in ys] == [(5, 1), (12, 1), (1, 1)]
    raw = raw_predict(server, MG, seqs)["outputs"]
    for y, r in zip(ys, raw, strict=True):
        np.testing.assert_array_equal(y, np.asarray(r, np.float32))
    stack = np.stack([series(4), series(4)])
    ys = client.predict(MG, stack, 1)
    assert isinstance(ys, np.ndarray) and ys.shape == (2, 4, 1)
    last = client.predict(MG, seqs, return_sequences=False)
    np.testing.assert_allclose(np.stack(last), np.stack([y[-1] for y in client.predict(MG, seqs)]))


def test_predict_state_continues_a_sequence(client: Any) -> None:
    x = series(30)
    whole = client.predict(MG, x)
    first = client.predict(MG, x[:10], return_state=True)
    assert isinstance(first, Prediction) and set(first.state) == {"cell_states", "cell_outputs"}
    assert first.state["cell_states"].shape == (16,)
    rest = client.predict(MG, x[10:], state=first.state)
    np.testing.assert_allclose(np.concatenate([first.outputs, rest]), whole, atol=1e-5)
    batch = client.predict(MG, [x[:10], x[:3]], return_state=True)
    assert isinstance(batch.state, list) and len(batch.state) == 2
    again = client.predict(MG, [x[10:], x[3:]], state=batch.state)
    np.testing.assert_allclose(again[0], whole[10:], atol=1e-5)
    np.testing.assert_allclose(again[1], whole[3:], atol=1e-5)


def test_predict_internals(client: Any, server: LiveServer) -> None:
    x = series(6, 2)
    p = client.predict(TC, x, return_internals=True)
    assert isinstance(p, Prediction) and p.state is None
    raw = raw_predict(server, TC, [x], return_internals=True)["internals"][0]
    np.testing.assert_array_equal(
        p.internals["cell_states"], np.asarray(raw["cell_states"], np.float32)
    )
    assert set(p.internals["gates"]) == {"input", "forget", "output"}
    assert p.internals["gates"]["forget"].shape == (6, len(raw["gates"]["forget"][0]))


def test_predict_bad_input(client: Any) -> None:
    with pytest.raises(InvalidInput) as e:
        client.predict(MG, series(4, 3))  # 3 features for a 1-input model: the server says so
    assert e.value.status_code == 422 and e.value.detail
    with pytest.raises(InvalidInput):
        client.predict(MG, np.array([[np.nan]]))  # refused before sending
    with pytest.raises(InvalidInput):
        client.predict(MG, np.zeros(5))  # not [time, input_size]
    with pytest.raises(InvalidInput):
        client.predict(MG, [])
    with pytest.raises(PayloadTooLarge) as big:
        client.predict(MG, series(2001))  # the server's PEEPHOLE_MAX_STEPS is 2000 here
    assert big.value.status_code == 413 and "2000" in big.value.detail
    with pytest.raises(PayloadTooLarge):
        client.predict(MG, [series(2)] * 9)  # PEEPHOLE_MAX_BATCH_SIZE 8


# -- sessions ---------------------------------------------------------------------------------


def test_session_steps_equal_whole_predict_and_are_deleted_on_exit(client: Any) -> None:
    x = series(25)
    whole = client.predict(MG, x, 1)
    with client.session(MG, version=1, ttl=120) as s:
        assert (s.model, s.version, s.offset) == (MG, 1, 0) and s.id
        assert s.info.ttl_seconds == 120 and s.expires_at
        outs = [s.step(c) for c in np.split(x, [1, 8, 9, 20])]
        assert s.offset == 25
        sid = s.id
    np.testing.assert_allclose(np.concatenate(outs), whole, atol=1e-5)
    with pytest.raises(SessionNotFound):
        client.attach(sid)


def test_keep_attach_and_delete(client: Any) -> None:
    with client.session(MG, keep=True) as s:
        s.step(series(3))
    other = client.attach(s.id)
    assert other.offset == 3 and other.model == MG and other.version == 2
    other.delete()
    with pytest.raises(SessionNotFound) as e:
        s.step(series(1))
    assert e.value.status_code == 404
    with pytest.raises(SessionNotFound):
        s.delete()


def test_state_restore_and_fork_continue_the_sequence(client: Any) -> None:
    x = series(20)
    whole = client.predict(MG, x)
    with client.session(MG) as s:
        head = s.step(x[:12])
        state = s.state()
        assert set(state) == {"cell_states", "cell_outputs"}
        with client.restore(MG, state, s.offset) as r:
            assert r.offset == 12
            np.testing.assert_allclose(r.step(x[12:]), whole[12:], atol=1e-5)
            assert r.offset == 20
        with s.fork() as f:
            assert f.id != s.id and f.offset == 12 and f.version == s.version
            np.testing.assert_allclose(f.step(x[12:]), whole[12:], atol=1e-5)
        np.testing.assert_allclose(np.concatenate([head, s.step(x[12:])]), whole, atol=1e-5)
        assert s.offset == 20


def test_reset(client: Any) -> None:
    x = series(6)
    with client.session(MG) as s:
        first = s.step(x)
        assert s.reset() is not None and s.offset == 0
        np.testing.assert_allclose(s.step(x), first, atol=1e-6)
        assert s.offset == 6


def test_stream_equals_whole_predict(client: Any) -> None:
    x = series(40)
    whole = client.predict(MG, x)
    with client.session(MG) as s:
        s.step(x[:4])
        outs = list(s.stream(np.split(x[4:], [3, 4, 20])))
        assert s.offset == 40
        np.testing.assert_allclose(np.concatenate([whole[:4], *outs]), whole, atol=1e-5)
        assert client.attach(s.id).offset == 40
        np.testing.assert_allclose(s.step(series(1)).shape, (1, 1))


def test_step_and_stream_internals(client: Any, server: LiveServer) -> None:
    x = series(5, 2)
    raw = raw_predict(server, TC, [x], return_internals=True)["internals"][0]
    with client.session(TC) as s:
        r = s.step(x[:2], return_internals=True)
        assert isinstance(r, Step) and r.outputs.shape == (2, client.model(TC)["output_size"])
        (last,) = list(s.stream([x[2:]], return_internals=True))
    cells = np.concatenate([r.internals["cell_states"], last.internals["cell_states"]])
    np.testing.assert_allclose(cells, np.asarray(raw["cell_states"]), atol=1e-5)


def test_session_step_errors(client: Any) -> None:
    with client.session(MG) as s:
        with pytest.raises(InvalidInput) as e:
            s.step(series(2, 2))  # the server: wrong feature count
        assert e.value.status_code == 422
        with pytest.raises(InvalidInput):
            s.step(np.zeros((0, 1)))  # refused before sending
        with pytest.raises(InvalidInput):
            s.step([[float("inf")]])
        with pytest.raises(PayloadTooLarge):
            s.step(series(2001))
        with pytest.raises(InvalidInput):
            list(s.stream([series(2, 3)]))  # the same error through the WebSocket
        assert s.offset == 0 and client.attach(s.id).offset == 0  # nothing applied


def test_offset_conflict_names_both_offsets_and_refresh_adopts(client: Any) -> None:
    with client.session(MG) as s:
        stale = client.attach(s.id)
        s.step(series(3))
        with pytest.raises(OffsetConflict) as e:
            stale.step(series(2))
        assert (e.value.offset, e.value.client_offset, e.value.status_code) == (3, 0, 409)
        assert "stands at offset 3" in str(e.value) and "not applied" in str(e.value)
        with pytest.raises(OffsetConflict):
            list(stale.stream([series(2)]))
        with pytest.raises(OffsetConflict):
            stale.state()  # that state would not be offset 0's
        assert stale.refresh().offset == 3
        stale.step(series(2))
        assert client.attach(s.id).offset == 5


def test_unknown_session(client: Any) -> None:
    with pytest.raises(SessionNotFound):
        client.attach("no-such-session")
    with client.session(MG) as s:
        gone = client.attach(s.id)
    with pytest.raises(SessionNotFound):
        gone.step(series(1))
    with pytest.raises(SessionNotFound):
        list(gone.stream([series(1)]))  # the server sends 404 and closes with 4404
    with pytest.raises(SessionNotFound):
        gone.reset()
    with pytest.raises(SessionNotFound):
        gone.state()


def test_unauthorized(connect: Any, server: LiveServer, client: Any) -> None:
    for key in (None, "wrong-key"):
        with pytest.raises(Unauthorized) as e:
            connect(server.url, key).models()
        assert e.value.status_code == 401 and e.value.detail
    with client.session(MG) as s:
        intruder = connect(server.url, "wrong-key")
        with pytest.raises(Unauthorized):
            intruder.predict(MG, series(2))
        with pytest.raises(Unauthorized):
            intruder.attach(s.id)
        # The stream: the server accepts, sends 401 and closes with 4401.
        owner_view = connect(server.url).attach(s.id)
        owner_view.client.endpoint = intruder.endpoint
        with pytest.raises(Unauthorized):
            list(owner_view.stream([series(1)]))
        assert client.attach(s.id).offset == 0


def test_capacity_reached(connect: Any, repo: Any) -> None:
    with LiveServer(make_settings(repo, max_sessions=1)) as small:
        c = connect(small.url, None)
        with c.session(MG):
            with pytest.raises(CapacityReached) as e:
                c.session(MG)
            assert e.value.status_code == 429 and e.value.retry_after >= 1
        with c.session(MG) as s:  # room again once the first is deleted
            assert s.offset == 0


def test_unavailable_after_the_retry_budget(connect: Any, repo: Any) -> None:
    c = connect(f"http://127.0.0.1:{free_port()}", None, retries=Retry(2, backoff=0.01))
    with pytest.raises(Unavailable) as e:
        c.models()
    assert e.value.status_code is None and "3 attempts" in str(e.value)
    assert c.stats.retries["connection"] == 2 and c.stats.gave_up == 1
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(repo, session_store="redis", redis_url=dead_redis,
                             redis_timeout_seconds=0.2)  # fmt: skip
    with LiveServer(settings) as broken:
        c = connect(broken.url, None, retries=Retry(1, backoff=0.01))
        with pytest.raises(Unavailable) as e:
            c.session(MG)
        assert e.value.status_code == 503 and "store" in e.value.detail
        assert c.stats.retries["503"] == 1


def test_async_context_managers_and_an_async_chunk_source(server: LiveServer) -> None:
    x = series(12)

    async def chunks() -> Any:
        for c in np.split(x, 3):
            yield c

    async def main() -> tuple[np.ndarray, list[np.ndarray], int, str]:
        async with AsyncClient(server.url, KEY, retries=FAST) as c:
            whole = await c.predict(MG, x)
            async with c.session(MG) as s:
                outs = [y async for y in s.stream(chunks())]
                async with s.fork() as f:
                    offset = f.offset
                sid = s.id
            with pytest.raises(SessionNotFound):
                await c.attach(sid)
            return whole, outs, offset, sid

    whole, outs, offset, _ = asyncio.run(main())
    np.testing.assert_allclose(np.concatenate(outs), whole, atol=1e-5)
    assert offset == 12
