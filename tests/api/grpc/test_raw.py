"""Messages tritonclient would never send, through a raw grpcio stub on the generated code:
each malformed request gets a clear status (unary) or `error_message` (stream, which stays
open), the server does not crash, and a live sequence addressed by the bad messages is left
exactly as it was."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from app.api.grpc._proto import grpc_service_pb2 as pb
from app.api.grpc._proto import grpc_service_pb2_grpc as pb_grpc
from tests.api.grpc.conftest import MAX_BODY, output, request, v1_predict, xs
from tests.live import LiveServer
from tests.repo import LNSC

INVALID = grpc.StatusCode.INVALID_ARGUMENT
SEQ = "raw-live"
X1 = np.zeros((1, 1, 3), np.float32)


def base(**params: Any) -> Any:
    """A valid one-step request of the live sequence, to be broken by each case."""
    return request(LNSC, X1, sequence_id=SEQ, **params)


def edit(fn: Callable[[Any], object], **params: Any) -> Any:
    r = base(**params)
    fn(r)
    return r


def only(name: str = "x", datatype: str = "FP32", shape: tuple[int, ...] = (1, 1, 3),
         raw: bytes | None = None, **contents: list[float]) -> Any:  # fmt: skip
    """The live sequence's request with one input as given (raw blob, typed contents, none)."""

    def f(r: Any) -> None:
        r.ClearField("inputs")
        r.ClearField("raw_input_contents")
        t = r.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw is not None:
            r.raw_input_contents.append(raw)
        for field, values in contents.items():
            getattr(t.contents, field).extend(values)

    return edit(f)


def plus(name: str, shape: list[int], nbytes: int) -> Any:
    """The live sequence's request with a second raw input."""

    def f(r: Any) -> None:
        r.inputs.add(name=name, datatype="FP32", shape=shape)
        r.raw_input_contents.append(bytes(nbytes))

    return edit(f)


def no_inputs(r: Any) -> None:
    r.ClearField("inputs")
    r.ClearField("raw_input_contents")


ZEROS = bytes(12)  # 3 FP32 zeros
CASES: list[tuple[str, Any, grpc.StatusCode, str]] = [
    ("shape: 2 dimensions", only(shape=(1, 3), raw=ZEROS), INVALID, "expected [batch, time, 3]"),
    ("shape: wrong feature count", only(shape=(1, 3, 1), raw=ZEROS), INVALID,
     "expected [batch, time, 3]"),
    ("shape: negative dimension", only(shape=(1, -1, 3), raw=ZEROS), INVALID, "non-negative"),
    ("shape: no time step", only(shape=(1, 0, 3), raw=b""), INVALID,
     "at least one sequence and one time step"),
    ("datatype FP64", only(datatype="FP64", raw=bytes(24)), INVALID,
     "datatype FP64; the model expects FP32"),
    ("datatype unknown", only(datatype="FLOAT", raw=ZEROS), INVALID, "'FLOAT' (unknown)"),
    ("raw size lies: short", only(raw=bytes(8)), INVALID,
     "raw_input_contents[0] is 8 bytes but shape [1, 1, 3] of FP32 needs 12"),
    ("raw size lies: long", only(raw=bytes(16)), INVALID, "is 16 bytes"),
    ("raw size lies: huge shape", only(shape=(1, 2**40, 3), raw=ZEROS), INVALID,
     "needs 13194139533312"),
    ("raw: one blob too many", edit(lambda r: r.raw_input_contents.append(ZEROS)), INVALID,
     "raw_input_contents has 2 entries for 1 inputs"),
    ("raw and contents both", edit(lambda r: r.inputs[0].contents.fp32_contents.extend([0] * 3)),
     INVALID, "has contents while raw_input_contents is used"),
    ("neither raw nor contents", only(), INVALID, "neither contents nor raw_input_contents"),
    ("fp32_contents count lies", only(fp32_contents=[0.0, 1.0]), INVALID,
     "shape holds 3 elements but fp32_contents has 2"),
    ("int_contents for FP32", only(int_contents=[1, 2, 3]), INVALID,
     "FP32 values go in contents.fp32_contents, not int_contents"),
    ("NaN", only(raw=np.array([0, np.nan, 0], "<f4").tobytes()), INVALID, "must be finite"),
    ("-infinity", only(raw=np.array([0, 0, -np.inf], "<f4").tobytes()), INVALID,
     "must be finite"),
    ("infinity among many", only(shape=(1, 20, 3), raw=np.array([0] * 59 + [np.inf], "<f4")
                                 .tobytes()), INVALID, "must be finite"),  # fmt: skip
    ("NaN in fp32_contents", only(fp32_contents=[0.0, float("nan"), 0.0]), INVALID,
     "must be finite"),
    ("input x missing", only(name="cell_states", shape=(1, 4), raw=bytes(16)), INVALID,
     "input 'x' is missing"),
    ("unknown input", plus("z", [1], 4), INVALID, "unknown input 'z'"),
    ("input twice", plus("x", [1, 1, 3], 12), INVALID, "input 'x' appears twice"),
    ("state input after start", plus("cell_states", [1, 4], 16), INVALID,
     "only on the start of a sequence"),
    ("no inputs", edit(no_inputs), INVALID, "inputs must be a non-empty list"),
    ("unknown output", edit(lambda r: r.outputs.add(name="nope")), INVALID,
     "unknown output 'nope'"),
    ("output twice", edit(lambda r: r.outputs.extend([pb.ModelInferRequest
                                                      .InferRequestedOutputTensor(name="y")] * 2)),
     INVALID, "requested twice"),
    ("sequence_id negative", request(LNSC, X1, sequence_id=-3), INVALID, "unsigned 64-bit"),
    ("sequence_id a double", request(LNSC, X1, sequence_id=1.5), INVALID,
     "an unsigned integer or a string, got a number"),
    ("sequence_start not a bool", base(sequence_start=1), INVALID,
     "sequence_start must be a boolean"),
    ("offset not an integer", base(offset="3"), INVALID, "parameters.offset must be an integer"),
    ("offset negative", base(offset=-1), INVALID, "parameters.offset must be an integer"),
    ("offset without a sequence", request(LNSC, X1, offset=0), INVALID,
     "offset is for sequence requests"),
    ("unknown model", edit(lambda r: setattr(r, "model_name", "nope")), grpc.StatusCode.NOT_FOUND,
     "unknown model 'nope'"),
    ("unknown version", edit(lambda r: setattr(r, "model_version", "7")),
     grpc.StatusCode.NOT_FOUND, "has no version '7'"),
    ("batch over the limit", request(LNSC, np.zeros((9, 1, 3), np.float32)),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "9 sequences; the limit is 8"),
    ("steps over the limit", request(LNSC, np.zeros((1, 2001, 3), np.float32)),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "2001 time steps; the limit is 2000"),
    ("message over the size limit", request(LNSC, np.zeros((1, MAX_BODY // 12 + 1, 3))),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    ("not protobuf at all", b"\xff\xff\xff\xff garbage", INVALID,
     "not a valid inference.ModelInferRequest protobuf message"),
]  # fmt: skip


@pytest.fixture()
def channel(gserver: LiveServer) -> Any:
    assert gserver.grpc_target is not None
    with grpc.insecure_channel(gserver.grpc_target) as ch:
        yield ch


def raw_bytes(msg: Any) -> bytes:
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


def test_malformed_unary_each_a_clear_status_and_the_sequence_untouched(
    channel: grpc.Channel, client: httpx.Client
) -> None:
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    x = xs(LNSC, 1, 3)
    start = request(LNSC, x[:, :1], sequence_id=SEQ, sequence_start=True)
    assert stub.ModelInfer(start).parameters["offset"].int64_param == 1
    seen = []
    for label, msg, code, words in CASES:
        with pytest.raises(grpc.RpcError) as e:
            infer(raw_bytes(msg))
        assert e.value.code() == code, (label, e.value.code(), e.value.details())
        assert words in (e.value.details() or ""), (label, e.value.details())
        seen.append(label)
    assert len(seen) == len(CASES)
    # the live sequence took none of them: it continues at offset 1
    rest = stub.ModelInfer(request(LNSC, x[:, 1:], sequence_id=SEQ, sequence_end=True, offset=1))
    assert rest.parameters["offset"].int64_param == 3
    first = stub.ModelInfer(request(LNSC, x[:, :1]))
    got = np.concatenate([output(first, "y"), output(rest, "y")], axis=1)
    np.testing.assert_allclose(got, v1_predict(client, LNSC, x)["outputs"], atol=1e-5)
    assert stub.ServerLive(pb.ServerLiveRequest()).live


def test_malformed_in_a_stream_answered_in_it(channel: grpc.Channel, client: httpx.Client) -> None:
    """Every case but the oversized message (which gRPC refuses by ending the call) on one
    stream: each answered by an error_message naming the problem, then a good step."""
    stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    cases = [c for c in CASES if c[2] != grpc.StatusCode.RESOURCE_EXHAUSTED or "limit" in c[3]]
    good = request(LNSC, X1, sequence_id="raw-stream", sequence_start=True)
    good.id = "good"
    messages = [raw_bytes(m) for _, m, _, _ in cases] + [good.SerializeToString()]
    answers = [pb.ModelStreamInferResponse.FromString(a) for a in stream(iter(messages))]
    assert len(answers) == len(messages)
    by_words = [a.error_message for a in answers[:-1]]
    for (label, _, _, words), got in zip(cases, by_words, strict=True):
        assert words in got, (label, got)
    assert answers[-1].error_message == "" and answers[-1].infer_response.id == "good"
    # errors carry the request's id and model, so that a client of many sequences can tell
    tagged = request(LNSC, xs(LNSC, 2, 1), sequence_id=7)
    tagged.id = "tagged"
    (answer,) = stream(iter([tagged.SerializeToString()]))
    r = pb.ModelStreamInferResponse.FromString(answer)
    assert "batch 1" in r.error_message and r.infer_response.id == "tagged"
    text = client.get("/metrics").text  # each message counted by the code of its answer
    assert 'peephole_grpc_stream_messages_total{code="INVALID_ARGUMENT"}' in text
    assert 'peephole_grpc_stream_messages_total{code="OK"}' in text
    assert 'peephole_grpc_requests_total{code="OK",method="ModelStreamInfer"}' in text
