"""The committed generated code matches the committed .proto files, lives in a pool of its own
(so that tritonclient's copy of the same files can be imported beside it), and the service has
every RPC Triton's clients call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from tritonclient.grpc import service_pb2 as triton_pb2

from app.api.grpc._proto import POOL, regenerate
from app.api.grpc._proto import grpc_service_pb2 as pb


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    out = tmp_path / "set.pb"
    regenerate.protoc(tmp_path, f"--descriptor_set_out={out}")
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert [f.name for f in fresh.file] == list(regenerate.PROTOS)
    for want in fresh.file:
        without_json_names(want.message_type)  # protoc adds them to descriptor sets only
        got = descriptor_pb2.FileDescriptorProto.FromString(
            POOL.FindFileByName(want.name).serialized_pb
        )
        assert got == want, f"{want.name}: run python -m app.api.grpc._proto.regenerate"


def without_json_names(messages: Any) -> None:
    for m in messages:
        for f in m.field:
            f.ClearField("json_name")
        without_json_names(m.nested_type)


def test_own_pool_beside_tritonclient() -> None:
    assert pb.DESCRIPTOR.pool is POOL and POOL is not descriptor_pool.Default()
    ours = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\0\0\0\0"])
    theirs = triton_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.model_name == "m" and theirs.raw_input_contents == [b"\0\0\0\0"]
    methods = POOL.FindServiceByName("inference.GRPCInferenceService").methods_by_name
    assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
            "ModelInfer", "ModelStreamInfer", "ModelConfig", "RepositoryIndex"} <= set(methods)  # fmt: skip
