"""ModelStreamInfer, Triton's bidirectional stream, through `tritonclient.grpc`
(`start_stream` / `async_stream_infer`) and `tritonclient.grpc.aio` (`stream_infer`): several
sequences interleaved on one stream in chunks equal their whole sequences, an error is answered
in the stream and the stream goes on, a retried step (same `offset`) is not applied twice, and
a sequence started over gRPC continues over /v2 REST and back."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import numpy as np
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
import tritonclient.http as th

from app.api.grpc._proto import grpc_service_pb2_grpc as pb_grpc
from app.sessions.memory import MemorySessionStore
from tests.api.grpc.conftest import grpc_settings, output, request, v1_predict, x_input, xs
from tests.live import LiveServer
from tests.repo import LNSC, PLAIN, RepoModels


class Stream:
    """tritonclient's callback stream, with answers collected in order of arrival."""

    def __init__(self, triton: tg.InferenceServerClient) -> None:
        self.triton = triton
        self.answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        triton.start_stream(callback=lambda result, error: self.answers.put((result, error)))

    def send(self, name: str, x: np.ndarray, **kw: Any) -> None:
        self.triton.async_stream_infer(name, [x_input(x)], **kw)

    def next(self) -> tuple[Any, Any]:
        return self.answers.get(timeout=30)

    def close(self) -> None:
        self.triton.stop_stream()


def test_interleaved_sequences_in_chunks_equal_whole(
    triton: tg.InferenceServerClient, client: httpx.Client
) -> None:
    seqs = {101: xs(LNSC, 1, 23), "s-b": xs(LNSC, 1, 23), 103: xs(PLAIN, 1, 23)}
    model = {101: LNSC, "s-b": LNSC, 103: PLAIN}
    cuts = [0, 1, 2, 9, 10, 22, 23]
    s = Stream(triton)
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):  # all sent before any answer
        for seq, x in seqs.items():
            s.send(model[seq], x[:, a:b], request_id=f"{seq}/{i}", sequence_id=seq,
                   sequence_start=i == 0, sequence_end=b == 23)  # fmt: skip
    got: dict[Any, list[tuple[int, np.ndarray]]] = {seq: [] for seq in seqs}
    for _ in range(len(seqs) * (len(cuts) - 1)):
        result, error = s.next()
        assert error is None, error
        seq, i = result.get_response().id.rsplit("/", 1)
        key = int(seq) if seq.isdigit() else seq
        got[key].append((int(i), result.as_numpy("y")))
    s.close()
    for seq, x in seqs.items():
        order = [i for i, _ in got[seq]]
        assert order == sorted(order)  # a sequence's answers come in order
        y = np.concatenate([y for _, y in got[seq]], axis=1)
        np.testing.assert_allclose(y, v1_predict(client, model[seq], x)["outputs"], atol=1e-5)


def test_error_in_stream_keeps_it_open_and_offsets_make_retries_safe(
    triton: tg.InferenceServerClient,
) -> None:
    x = xs(LNSC, 1, 6)
    s = Stream(triton)
    s.send(LNSC, x[:, :2], sequence_id=55, sequence_start=True, parameters={"offset": 0})
    first, error = s.next()
    assert error is None and first.get_response().parameters["offset"].int64_param == 2
    s.send(LNSC, xs(PLAIN, 1, 2), sequence_id=55)  # wrong feature count: an error...
    _, error = s.next()
    assert "expected [batch, time, 3]" in error.message()
    s.send("nope", x[:, 2:4], sequence_id=55)  # ...and another...
    _, error = s.next()
    assert "unknown model 'nope'" in error.message()
    s.send(LNSC, x[:, 2:4], sequence_id=55, parameters={"offset": 2})  # ...the stream goes on
    second, error = s.next()
    assert error is None and second.get_response().parameters["offset"].int64_param == 4
    # the answer was lost, say: the client sends the same step again with the same offset
    s.send(LNSC, x[:, 2:4], sequence_id=55, parameters={"offset": 2})
    again, error = s.next()
    assert error is None and again.get_response().parameters["offset"].int64_param == 4
    np.testing.assert_array_equal(again.as_numpy("y"), second.as_numpy("y"))
    s.send(LNSC, x[:, 4:6], sequence_id=55, parameters={"offset": 3})  # neither: a conflict
    _, error = s.next()
    assert "offset conflict: the session stands at offset 4" in error.message()
    s.send(LNSC, x[:, 4:6], sequence_id=55, sequence_end=True, parameters={"offset": 4})
    last, error = s.next()
    assert error is None
    s.close()
    whole = triton.infer(LNSC, [x_input(x)]).as_numpy("y")  # each step applied exactly once
    got = np.concatenate([r.as_numpy("y") for r in (first, second, last)], axis=1)
    np.testing.assert_allclose(got, whole, atol=1e-5)


def test_asyncio_client_stream_and_unary(gserver: LiveServer, client: httpx.Client) -> None:
    x = xs(LNSC, 1, 12)
    cuts = [0, 3, 4, 12]

    async def run() -> list[np.ndarray]:
        assert gserver.grpc_target is not None
        c = tga.InferenceServerClient(gserver.grpc_target)
        try:
            assert await c.is_server_ready()
            one = await c.infer(LNSC, [x_input(x)])

            async def requests() -> Any:
                for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
                    yield {"model_name": LNSC, "inputs": [x_input(x[:, a:b])],
                           "sequence_id": "aio", "sequence_start": i == 0,
                           "sequence_end": b == 12}  # fmt: skip

            ys = []
            async for result, error in c.stream_infer(requests()):
                assert error is None, error
                ys.append(result.as_numpy("y"))
                if len(ys) == len(cuts) - 1:
                    break
            return [one.as_numpy("y"), np.concatenate(ys, axis=1)]
        finally:
            await c.close()

    unary, streamed = asyncio.run(run())
    want = v1_predict(client, LNSC, x)["outputs"]
    np.testing.assert_allclose(unary, want, atol=1e-6)
    np.testing.assert_allclose(streamed, want, atol=1e-5)


def test_sequence_crosses_protocols(
    gserver: LiveServer, triton: tg.InferenceServerClient, client: httpx.Client
) -> None:
    """Started over gRPC, continued over /v2 REST, back over the gRPC stream, ended over REST:
    one sequence in one store (the same ids), equal to the whole sequence."""
    rest = th.InferenceServerClient(gserver.url.removeprefix("http://"))
    x = xs(LNSC, 1, 20)

    def rest_step(a: int, b: int, **kw: Any) -> Any:
        i = th.InferInput("x", [1, b - a, 3], "FP32")
        i.set_data_from_numpy(x[:, a:b], binary_data=True)
        return rest.infer(LNSC, [i], sequence_id="cross", **kw)

    ys = [triton.infer(LNSC, [x_input(x[:, :5])], sequence_id="cross", sequence_start=True)
          .as_numpy("y")]  # fmt: skip
    r = rest_step(5, 9, parameters={"offset": 5})
    assert r.get_response()["parameters"]["offset"] == 9
    ys.append(r.as_numpy("y"))
    s = Stream(triton)
    s.send(LNSC, x[:, 9:15], sequence_id="cross", parameters={"offset": 9})
    result, error = s.next()
    s.close()
    assert error is None
    ys += [result.as_numpy("y"), rest_step(15, 20, sequence_end=True).as_numpy("y")]
    rest.close()
    want = v1_predict(client, LNSC, x)["outputs"]
    np.testing.assert_allclose(np.concatenate(ys, axis=1), want, atol=1e-5)


class Suspending(MemorySessionStore):
    """Suspends for up to 5 ms (at random) before every access, as a store over
    the network does: steps of one sequence no longer reach its lock in the order sent."""

    async def create(self, session):  # type: ignore[no-untyped-def]
        await asyncio.sleep(random.random() * 0.005)
        return await super().create(session)

    @contextlib.asynccontextmanager
    async def locked(self, session_id: str) -> AsyncIterator[Any]:
        await asyncio.sleep(random.random() * 0.005)
        async with super().locked(session_id) as s:
            yield s


def test_pipelined_steps_apply_in_order(models: RepoModels) -> None:
    """60 one-step messages of three sequences, sent at once on one stream (a raw client:
    tritonclient paces its sends), on a store that suspends: each sequence's steps are applied
    in the order sent, while different sequences' steps are in flight together."""
    seqs = {f"p-{k}": xs(LNSC, 1, 20) for k in "abc"}
    messages = []
    for t in range(20):
        for seq, x in seqs.items():
            r = request(LNSC, x[:, t : t + 1], sequence_id=seq, sequence_start=t == 0)
            r.id = f"{seq}/{t}"
            messages.append(r)
    with LiveServer(grpc_settings(models), store=Suspending(max_sessions=10)) as server:
        assert server.grpc_target is not None
        with grpc.insecure_channel(server.grpc_target) as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            answers = list(stub.ModelStreamInfer(iter(messages)))
            wholes = {
                seq: output(stub.ModelInfer(request(LNSC, x)), "y") for seq, x in seqs.items()
            }
    got: dict[str, dict[int, np.ndarray]] = {seq: {} for seq in seqs}
    for a in answers:
        assert not a.error_message, a.error_message
        seq, t = a.infer_response.id.rsplit("/", 1)
        got[seq][int(t)] = output(a.infer_response, "y")
    for seq in seqs:
        y = np.concatenate([got[seq][t] for t in range(20)], axis=1)
        np.testing.assert_allclose(y, wholes[seq], atol=1e-5)
