"""`python -m app --workers 2 --grpc-port P`: each worker serves the gRPC port (SO_REUSEPORT),
and a sequence stepped over fresh connections, so over either worker (sessions in the lmdb
store), equals the whole sequence."""

from __future__ import annotations

import time

import grpc
import numpy as np

from app.api.grpc._proto import grpc_service_pb2_grpc as pb_grpc
from tests.api.grpc.conftest import output, request
from tests.app.server import App
from tests.live import free_port
from tests.repo import LNSC, RepoModels


def listening_sockets(port: int) -> int:
    """LISTEN sockets on `port` (one per process bound to it with SO_REUSEPORT)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                n += state == "0A" and int(local.rsplit(":", 1)[1], 16) == port
    return n


def test_two_workers_serve_grpc(models: RepoModels) -> None:
    port = free_port()
    app = App(models.repo, "--workers", "2", "--session-store", "lmdb", "--grpc-port", str(port))
    try:
        assert len(app.workers()) == 2
        deadline = time.monotonic() + 60  # ready answers when one worker is; wait for both
        while listening_sockets(port) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert listening_sockets(port) == 2
        x = np.random.default_rng(2).normal(size=(1, 12, 3)).astype(np.float32)
        cuts, ys = [0, 2, 3, 7, 12], []
        for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:  # a new connection each step
                r = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
                    request(
                        LNSC,
                        x[:, a:b],
                        sequence_id="workers",
                        sequence_start=i == 0,
                        sequence_end=b == 12,
                        offset=a,
                    )  # fmt: skip
                )
            assert r.parameters["offset"].int64_param == b
            ys.append(output(r, "y"))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            whole = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(request(LNSC, x))
        np.testing.assert_allclose(np.concatenate(ys, axis=1), output(whole, "y"), atol=1e-5)
    finally:
        log = app.stop()
    assert "Traceback" not in log, log[-3000:]
