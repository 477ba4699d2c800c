"""The model repository RPCs through `tritonclient.grpc` (get_model_repository_index,
load_model, unload_model) on a live server in explicit mode: Triton's states, the REST
endpoint's errors as status codes, and a gRPC sequence that keeps its version across a new
default and a drain, then FAILED_PRECONDITION (REST's 410), never another version's answer."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from app.api.grpc._proto import grpc_service_pb2 as pb
from app.api.grpc._proto import grpc_service_pb2_grpc as pb_grpc
from bench.reload import copy_with_wrong_sha
from tests.api.grpc.conftest import grpc_settings, x_input
from tests.live import LiveServer, wait_until_unloaded
from tests.repo import PLAIN, RepoModels, predict, repo_with

KEY = {"authorization": "Bearer ctl"}
rng = np.random.default_rng(15)


@pytest.fixture()
def live(models: RepoModels, tmp_path: Path) -> Iterator[LiveServer]:
    repo = repo_with(models, tmp_path / "models", (PLAIN, 1))
    settings = grpc_settings(models, model_repository=repo, model_control="explicit",
                             drain_seconds=5.0, api_keys="ctl")  # fmt: skip
    with LiveServer(settings) as s:
        yield s


def index(t: tg.InferenceServerClient) -> dict[str, tuple[str, str]]:
    return {f"{m.name}/{m.version}": (m.state, m.reason)
            for m in t.get_model_repository_index(headers=KEY).models}  # fmt: skip


def failure(call: object, *args: object, **kw: object) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as e:
        call(*args, headers=KEY, **kw)  # type: ignore[operator]
    return str(e.value.status()).removeprefix("StatusCode."), e.value.message()


def test_index_load_unload_and_errors(live: LiveServer, models: RepoModels) -> None:
    repo = live.settings.model_repository
    assert live.grpc_target is not None
    t = tg.InferenceServerClient(live.grpc_target)
    assert "model_repository" in t.get_server_metadata(headers=KEY).extensions
    assert index(t) == {f"{PLAIN}/1": ("READY", "")}
    shutil.copytree(models.repo / PLAIN / "2", repo / PLAIN / "2")
    assert index(t)[f"{PLAIN}/2"] == ("UNAVAILABLE", "in the repository, not loaded")
    t.load_model(PLAIN, headers=KEY)  # every version in the repository
    assert t.is_model_ready(PLAIN, "2", headers=KEY)
    t.unload_model(PLAIN, headers=KEY)
    assert not t.is_model_ready(PLAIN, headers=KEY) and t.is_server_ready()
    assert {s for s, _ in index(t).values()} == {"UNAVAILABLE"}  # no session: freed at once
    t.load_model(PLAIN, headers=KEY)
    assert t.is_model_ready(PLAIN, "1", headers=KEY) and t.is_model_ready(PLAIN, "2", headers=KEY)

    # errors: the REST endpoint's words, as status codes
    copy_with_wrong_sha(models.repo / PLAIN / "1", repo / PLAIN / "3", 3)
    code, msg = failure(t.load_model, PLAIN)
    assert code == "INVALID_ARGUMENT" and "version 3" in msg and "sha256" in msg
    assert t.is_model_ready(PLAIN, "2", headers=KEY)  # what served before still serves
    assert index(t)[f"{PLAIN}/3"][0] == "UNAVAILABLE" and "sha256" in index(t)[f"{PLAIN}/3"][1]
    with live.client(headers={"Authorization": "Bearer ctl"}) as c:
        rest = c.post("/v2/repository/models/nope/load").json()["error"]
    assert failure(t.load_model, "nope") == ("NOT_FOUND", rest)
    code, msg = failure(t.load_model, PLAIN, config=json.dumps({"max_batch_size": 8}))
    assert code == "INVALID_ARGUMENT" and "'config' is not supported" in msg
    with grpc.insecure_channel(live.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        meta = tuple(KEY.items())
        bad = pb.RepositoryModelLoadRequest(model_name=PLAIN)
        bad.parameters["version"].string_param = "x"
        for call, request, want in [
            (stub.RepositoryModelLoad, bad, grpc.StatusCode.INVALID_ARGUMENT),
            (stub.RepositoryIndex, pb.RepositoryIndexRequest(repository_name="other"),
             grpc.StatusCode.UNIMPLEMENTED),
            (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name=PLAIN),
             grpc.StatusCode.UNAUTHENTICATED),  # no key
        ]:  # fmt: skip
            with pytest.raises(grpc.RpcError) as e:
                call(request, metadata=meta if want != grpc.StatusCode.UNAUTHENTICATED else ())
            assert e.value.code() == want, e.value.details()
        ready = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), metadata=meta)
        assert [(m.version, m.state) for m in ready.models] == [("1", "READY"), ("2", "READY")]
    t.close()


def test_not_explicit_is_unavailable(triton: tg.InferenceServerClient) -> None:
    """The shared gRPC server runs PEEPHOLE_MODEL_CONTROL=none: the index answers, load and
    unload are UNAVAILABLE, as Triton outside its explicit mode."""
    with pytest.raises(InferenceServerException) as e:
        triton.unload_model(PLAIN)
    assert str(e.value.status()) == "StatusCode.UNAVAILABLE" and "explicit" in e.value.message()
    states = {f"{m.name}/{m.version}": m.state for m in triton.get_model_repository_index().models}
    assert states[f"{PLAIN}/1"] == "READY" and states["bad-sha/1"] == "UNAVAILABLE"


def test_sequence_keeps_its_version(live: LiveServer, models: RepoModels) -> None:
    """A gRPC sequence started on the default stays on it when version 2 becomes the default
    and while version 1 drains; after the drain it is FAILED_PRECONDITION."""
    repo = live.settings.model_repository
    assert live.grpc_target is not None
    t = tg.InferenceServerClient(live.grpc_target)
    x = rng.normal(size=(12, 2)).astype(np.float32)

    def step(part: np.ndarray, **kw: object) -> tg.InferResult:
        return t.infer(PLAIN, [x_input(part[None])], sequence_id=77, headers=KEY, **kw)

    ys = [step(x[:3], sequence_start=True)]
    shutil.copytree(models.repo / PLAIN / "2", repo / PLAIN / "2")
    t.load_model(PLAIN, headers=KEY)  # version 2 is the default now
    ys.append(step(x[3:6]))
    with live.client(headers={"Authorization": "Bearer ctl"}) as c:
        whole = {v: np.asarray(predict(c, PLAIN, [x.tolist()], v)["outputs"][0]) for v in (1, 2)}
    assert not np.allclose(whole[1], whole[2], atol=1e-3)  # the versions answer differently
    with grpc.insecure_channel(live.grpc_target) as channel:
        unload = pb.RepositoryModelUnloadRequest(model_name=PLAIN)
        unload.parameters["version"].int64_param = 1
        pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(
            unload, metadata=tuple(KEY.items())
        )
    assert not t.is_model_ready(PLAIN, "1", headers=KEY)
    assert index(t)[f"{PLAIN}/1"][0] == "UNLOADING"  # draining: its sequence is still live
    ys.append(step(x[6:9]))  # the sequence still steps on version 1
    assert {y.get_response().model_version for y in ys} == {"1"}
    got = np.concatenate([y.as_numpy("y")[0] for y in ys])
    np.testing.assert_allclose(got, whole[1][:9], atol=1e-5)
    wait_until_unloaded(live.url, PLAIN, 1, headers=KEY)  # the drain deadline passed
    code, msg = failure(t.infer, PLAIN, [x_input(x[None, 9:])], sequence_id=77)
    assert code == "FAILED_PRECONDITION" and "version 1" in msg
    assert step(x[:2], sequence_start=True).get_response().model_version == "2"
    t.close()
