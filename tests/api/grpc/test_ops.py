"""Operations over gRPC: grpc.health.v1 and server reflection queried for real, API keys from
the `authorization` metadata, session capacity and an unreachable store as status codes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tritonclient.utils import InferenceServerException

from app.errors import StoreUnavailable
from app.sessions.memory import MemorySessionStore
from tests.api.grpc.conftest import grpc_settings, x_input
from tests.live import LiveServer
from tests.repo import LNSC, RepoModels

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
KEY = {"authorization": "Bearer k1"}
ONE = np.zeros((1, 1, 3), np.float32)


def health(target: str, service: str) -> Any:
    with grpc.insecure_channel(target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service))


def test_health_and_reflection(gserver: LiveServer) -> None:
    target = gserver.grpc_target
    assert target is not None
    assert health(target, "").status == SERVING
    assert health(target, "inference.GRPCInferenceService").status == SERVING
    with pytest.raises(grpc.RpcError) as e:
        health(target, "no.such.Service")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(target) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= set(db.get_services())  # fmt: skip
        service = descriptor_pool.DescriptorPool(db).FindServiceByName(
            "inference.GRPCInferenceService"
        )
        stream = service.methods_by_name["ModelStreamInfer"]
        assert stream.client_streaming and stream.server_streaming
        assert stream.input_type.full_name == "inference.ModelInferRequest"
        assert "raw_input_contents" in stream.input_type.fields_by_name


@pytest.fixture(scope="module")
def guarded(models: RepoModels) -> Iterator[LiveServer]:
    """API keys on, and room for only two live sequences."""
    with LiveServer(grpc_settings(models, api_keys="k1", max_sessions=2)) as s:
        yield s


def test_api_keys(guarded: LiveServer) -> None:
    assert guarded.grpc_target is not None
    c = tg.InferenceServerClient(guarded.grpc_target)
    calls = [lambda **kw: c.get_server_metadata(**kw), lambda **kw: c.get_model_metadata(LNSC, **kw),
             lambda **kw: c.is_model_ready(LNSC, **kw),
             lambda **kw: c.infer(LNSC, [x_input(ONE)], **kw)]  # fmt: skip
    for call in calls:
        for headers in (None, {"authorization": "Bearer nope"}, {"authorization": "k1"}):
            with pytest.raises(InferenceServerException) as e:
                call(headers=headers)
            assert e.value.status() == "StatusCode.UNAUTHENTICATED"
            assert e.value.message() == "missing or wrong API key"
        call(headers=KEY)
    # the health checks stay open, as /health/* and /v2/health/* do
    assert c.is_server_live() and c.is_server_ready()
    assert health(guarded.grpc_target, "").status == SERVING
    results: list[Any] = []
    c.start_stream(callback=lambda result, error: results.append(error))
    with contextlib.suppress(InferenceServerException):  # refused at once: tritonclient
        c.async_stream_infer(LNSC, [x_input(ONE)])  # may notice before it sends
    c.stop_stream()
    assert results and results[0].status() == "StatusCode.UNAUTHENTICATED"
    c.start_stream(callback=lambda result, error: results.append((result, error)), headers=KEY)
    c.async_stream_infer(LNSC, [x_input(ONE)])
    c.stop_stream()
    assert results[-1][1] is None
    c.close()


def test_capacity_is_resource_exhausted(guarded: LiveServer) -> None:
    assert guarded.grpc_target is not None
    c = tg.InferenceServerClient(guarded.grpc_target)

    def start(seq: int) -> Any:
        return c.infer(LNSC, [x_input(ONE)], sequence_id=seq, sequence_start=True, headers=KEY)

    start(1), start(2)
    with pytest.raises(InferenceServerException) as e:
        start(3)
    assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "session capacity reached" in e.value.message()
    start(1)  # restarting a live sequence takes no new slot
    c.infer(LNSC, [x_input(ONE)], sequence_id=2, sequence_end=True, headers=KEY)
    start(3)  # the ended sequence's slot is free again
    c.close()


def test_unreachable_store(models: RepoModels) -> None:
    class Broken(MemorySessionStore):
        async def ping(self) -> None:
            raise StoreUnavailable("connection refused")

        async def create(self, session):  # type: ignore[no-untyped-def]
            raise StoreUnavailable("connection refused")

    with LiveServer(grpc_settings(models), store=Broken(max_sessions=10)) as s:
        assert s.grpc_target is not None
        c = tg.InferenceServerClient(s.grpc_target)
        assert c.is_server_live() and not c.is_server_ready()
        assert health(s.grpc_target, "").status == NOT_SERVING
        with pytest.raises(InferenceServerException) as e:
            c.infer(LNSC, [x_input(ONE)], sequence_id="s", sequence_start=True)
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        assert "connection refused" in e.value.message()
        c.infer(LNSC, [x_input(ONE)])  # stateless inference needs no store
        c.close()
