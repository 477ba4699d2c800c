"""Fixtures for the gRPC tests: one live server speaking HTTP and gRPC on the same data plane,
`tritonclient.grpc` pointed at it (the client users really run), and a raw grpcio stub on the
generated code for messages tritonclient would never send."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg

from app.api.grpc._proto import grpc_service_pb2 as pb
from app.api.grpc._proto import grpc_service_pb2_grpc as pb_grpc
from tests.live import LiveServer, free_port, make_settings
from tests.repo import SIZES, RepoModels

MAX_BODY = 200_000
rng = np.random.default_rng(16)


def grpc_settings(models: RepoModels, **overrides: Any) -> Any:
    """gRPC on a free port; small limits so that their errors are cheap to provoke."""
    base: dict[str, Any] = dict(grpc_port=free_port(), max_batch_size=8, max_steps=2000,
                                max_body_bytes=MAX_BODY, max_sessions=50,
                                graceful_shutdown_seconds=1)  # fmt: skip
    return make_settings(models.repo, **{**base, **overrides})


@pytest.fixture(scope="session")
def gserver(models: RepoModels) -> Iterator[LiveServer]:
    with LiveServer(grpc_settings(models)) as s:
        yield s


@pytest.fixture()
def client(gserver: LiveServer) -> Iterator[httpx.Client]:
    with gserver.client() as c:
        yield c


@pytest.fixture()
def triton(gserver: LiveServer) -> Iterator[tg.InferenceServerClient]:
    assert gserver.grpc_target is not None
    c = tg.InferenceServerClient(gserver.grpc_target)
    yield c
    c.close()


@pytest.fixture()
def stub(gserver: LiveServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    assert gserver.grpc_target is not None
    with grpc.insecure_channel(gserver.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def xs(name: str, batch: int, steps: int) -> np.ndarray:
    return rng.normal(size=(batch, steps, SIZES[name][0])).astype(np.float32)


def x_input(x: np.ndarray, name: str = "x") -> tg.InferInput:
    i = tg.InferInput(name, list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return i


def v1_predict(client: httpx.Client, name: str, x: np.ndarray) -> dict[str, Any]:
    """The native API's whole-sequence answer: the reference for every gRPC result."""
    r = client.post(f"/v1/models/{name}/predict", json={"inputs": x.tolist(), "return_state": True})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def request(model: str, x: np.ndarray | None = None, **params: Any) -> Any:
    """A raw ModelInferRequest: x as raw little-endian bytes, parameters typed by value."""
    r = pb.ModelInferRequest(model_name=model)
    if x is not None:
        r.inputs.add(name="x", datatype="FP32", shape=x.shape)
        r.raw_input_contents.append(np.ascontiguousarray(x, "<f4").tobytes())
    for key, v in params.items():
        p = r.parameters[key]
        if isinstance(v, bool):
            p.bool_param = v
        elif isinstance(v, int):
            p.int64_param = v
        elif isinstance(v, float):
            p.double_param = v
        else:
            p.string_param = v
    return r


def output(resp: Any, name: str) -> np.ndarray:
    """An output of a raw ModelInferResponse, from raw_output_contents."""
    for i, o in enumerate(resp.outputs):
        if o.name == name:
            return np.frombuffer(resp.raw_output_contents[i], "<f4").reshape(list(o.shape))
    raise KeyError(name)
