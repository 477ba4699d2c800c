"""PEEPHOLE_MAX_INFLIGHT_BYTES over gRPC: large messages share HTTP's budget of large bodies.

An HTTP upload left unfinished holds its bytes of the budget (the middleware counts a large
body from its first bytes); while it does, a large ModelInfer is UNAVAILABLE with the
REST 503's message and Retry-After, a large stream message is answered with that message in
`error_message` (the stream stays open), and a small one is served. When the upload goes,
the same requests succeed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from app.api.grpc._proto import grpc_service_pb2 as pb
from app.api.grpc._proto import grpc_service_pb2_grpc as pb_grpc
from app.edge.limits import LARGE_BODY
from tests.api.grpc.conftest import grpc_settings, output, request
from tests.live import LiveServer
from tests.repo import PLAIN, SIZES, RepoModels

LIMIT = 400_000
STEPS = 36_000  # x of [1, STEPS, 2] FP32: 288,000 bytes, a large message
rng = np.random.default_rng(12)


@pytest.fixture(scope="module")
def server(models: RepoModels) -> Iterator[LiveServer]:
    settings = grpc_settings(models, max_body_bytes=LIMIT, max_inflight_bytes=LIMIT,
                             max_steps=STEPS, max_response_bytes=10 * LIMIT)  # fmt: skip
    with LiveServer(settings, transport="production") as s:
        yield s


@pytest.fixture()
def stub(server: LiveServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    assert server.grpc_target is not None
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def used(server: LiveServer) -> int:
    return int(server.app.state.inflight.used)


def wait_for(check: object, what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


class Upload:
    """A large HTTP body sent in part and left hanging: it holds its bytes of the budget."""

    def __init__(self, server: LiveServer, size: int) -> None:
        host, port = server.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)))
        head = (f"POST /v2/models/{PLAIN}/infer HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {size + 1000}\r\n\r\n")  # fmt: skip
        self.sock.sendall(head.encode() + b" " * size)
        wait_for(lambda: used(server) >= size, "the upload is not counted")

    def close(self) -> None:
        self.sock.close()


def large() -> tuple[np.ndarray, pb.ModelInferRequest]:
    x = rng.normal(size=(1, STEPS, SIZES[PLAIN][0])).astype(np.float32)
    assert x.nbytes >= LARGE_BODY and x.nbytes + 300_000 > LIMIT
    return x, request(PLAIN, x)


def test_large_requests_wait_for_the_shared_budget(server: LiveServer,
                                                   stub: pb_grpc.GRPCInferenceServiceStub) -> None:  # fmt: skip
    x, big = large()
    small = request(PLAIN, x[:, :5])
    upload = Upload(server, 300_000)
    try:
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(big, timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "bytes of large requests are being served" in (e.value.details() or "")
        assert ("retry-after", "1") in (e.value.trailing_metadata() or ())
        # a small request never waits for the budget
        assert output(stub.ModelInfer(small, timeout=30), "y").shape == (1, 5, 1)
        assert used(server) >= 300_000  # what the refused request held is back
        with pytest.raises(grpc.RpcError):  # still busy: nothing leaked the other way
            stub.ModelInfer(big, timeout=30)
    finally:
        upload.close()
    wait_for(lambda: used(server) == 0, "the upload's bytes are not given back")
    got = output(stub.ModelInfer(big, timeout=30), "y")
    assert got.shape == (1, STEPS, 1) and used(server) == 0


def test_a_large_stream_message_is_answered_in_the_stream(
    server: LiveServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    x, big = large()
    big.id = "big"
    small = request(PLAIN, x[:, :5])
    small.id = "small"
    upload = Upload(server, 300_000)
    try:
        answers = list(stub.ModelStreamInfer(iter([big, small]), timeout=30))
    finally:
        upload.close()
    by_id = {a.infer_response.id: a for a in answers}
    assert sorted(by_id) == ["big", "small"]
    assert "bytes of large requests are being served" in by_id["big"].error_message
    assert by_id["small"].error_message == ""  # the stream went on
    wait_for(lambda: used(server) == 0, "the upload's bytes are not given back")
    (ok,) = stub.ModelStreamInfer(iter([big]), timeout=30)
    assert ok.error_message == "" and output(ok.infer_response, "y").shape == (1, STEPS, 1)
    assert used(server) == 0
