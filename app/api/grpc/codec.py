"""Protobuf tensors <-> numpy, as Triton's gRPC endpoint words them.

An input's values come either in `raw_input_contents` (one little-endian, row-major blob per
input, in input order, viewed with `np.frombuffer`: what tritonclient sends) or in its typed
`contents` (`fp32_contents` for FP32); a request uses one or the other, as in Triton. Outputs
always go back as `raw_output_contents`, as Triton sends them. Parameters (`InferParameter`,
a oneof) become plain values, so that app/api/v2/protocol.py checks them with the same words
as the REST endpoint's JSON.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from app.api.grpc._proto import grpc_service_pb2 as pb
from app.api.v2.protocol import (
    FP32,
    InferOutcome,
    InferRequest,
    RequestedOutput,
    check_byte_size,
    check_datatype,
    check_finite,
    check_shape,
    flag,
    requested_output,
    sequence_id,
    step_offset,
)
from app.errors import InvalidInput

_LE_FP32 = np.dtype("<f4")
_ONEOF = "parameter_choice"
# Typed contents of other datatypes: a value there is a mistake worth naming.
_OTHER_CONTENTS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp64_contents",
    "bytes_contents",
)


def parameters(m: Any) -> dict[str, Any]:
    """An `InferParameter` map as plain values; an unset oneof is None."""
    out: dict[str, Any] = {}
    for key, p in m.items():
        which = p.WhichOneof(_ONEOF)
        out[key] = None if which is None else getattr(p, which)
    return out


def _contents(where: str, t: Any, count: int) -> np.ndarray:
    c = t.contents
    for name in _OTHER_CONTENTS:
        if len(getattr(c, name)):
            raise InvalidInput(f"{where}: FP32 values go in contents.fp32_contents, not {name}")
    values = c.fp32_contents
    if len(values) != count:
        raise InvalidInput(
            f"{where}: shape holds {count} elements but fp32_contents has {len(values)}"
        )
    return np.array(values, dtype=np.float32)


def decode_request(req: Any) -> InferRequest:
    """A `ModelInferRequest` as the protocol's request (FP32 arrays by input name)."""
    tensors = req.inputs
    if not tensors:
        raise InvalidInput("inputs must be a non-empty list of tensors")
    raw = req.raw_input_contents
    if raw and len(raw) != len(tensors):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(tensors)} inputs: send one "
            "per input, in input order"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(tensors):
        if not t.name:
            raise InvalidInput(f"inputs[{i}].name must be a non-empty string")
        where = f"input {t.name!r}"
        check_datatype(where, t.datatype)
        shape = check_shape(where, list(t.shape))
        count = math.prod(shape)
        if raw:
            if t.HasField("contents"):
                raise InvalidInput(f"{where} has contents while raw_input_contents is used")
            blob = raw[i]
            check_byte_size(where, f"raw_input_contents[{i}]", len(blob), shape, count)
            arr = np.frombuffer(blob, dtype=_LE_FP32)
        elif t.HasField("contents"):
            arr = _contents(where, t, count)
        else:
            raise InvalidInput(f"{where} has neither contents nor raw_input_contents")
        check_finite(where, arr)
        if t.name in inputs:
            raise InvalidInput(f"input {t.name!r} appears twice")
        inputs[t.name] = arr.reshape(shape)
    outputs: list[RequestedOutput] | None = None
    if req.outputs:
        seen: set[str] = set()
        outputs = [requested_output(o.name, parameters(o.parameters), seen) for o in req.outputs]
    params = parameters(req.parameters)
    return InferRequest(
        id=req.id or None,
        inputs=inputs,
        outputs=outputs,
        binary_output=True,
        sequence_id=sequence_id(params),
        sequence_start=flag(params, "sequence_start"),
        sequence_end=flag(params, "sequence_end"),
        offset=step_offset(params),
    )


def _set_parameter(p: Any, value: Any) -> None:
    if type(value) is bool:
        p.bool_param = value
    elif type(value) is int:
        p.int64_param = value
    elif type(value) is float:
        p.double_param = value
    else:
        p.string_param = str(value)


def response(name: str, version: int, request_id: str | None) -> Any:
    """An empty `ModelInferResponse` of a model version (errors on a stream carry one too)."""
    return pb.ModelInferResponse(model_name=name, model_version=str(version), id=request_id or "")


def encode_response(name: str, version: int, request_id: str | None, out: InferOutcome) -> Any:
    """A `ModelInferResponse` with the outputs as raw little-endian bytes, in request order."""
    resp = response(name, version, request_id)
    outputs, raw = resp.outputs, resp.raw_output_contents
    for o, arr in out.tensors:
        a = np.ascontiguousarray(arr, dtype=_LE_FP32)
        outputs.add(name=o.name, datatype=FP32, shape=a.shape)
        raw.append(a.tobytes())
    for key, value in out.parameters.items():
        _set_parameter(resp.parameters[key], value)
    return resp
