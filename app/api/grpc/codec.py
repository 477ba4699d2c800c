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
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from app.api.v2.protocol import (
    FP32,
    InferOutcome,
    InferRequest,
    RequestedOutput,
    bad_byte_size,
    bad_datatype,
    bad_shape,
    finite,
    infer_request,
    not_finite,
    requested_output,
)
from app.errors import InvalidInput

_LE_FP32 = np.dtype("<f4")
_SMALL = 16  # up to this many values, finiteness is checked without numpy
_UNPACK = [struct.Struct(f"<{n}f").unpack for n in range(_SMALL + 1)]
_ONEOF = "parameter_choice"
_KNOWN = ("sequence_id", "sequence_start", "sequence_end", "offset")
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


class Malformed:
    """A message that is not valid protobuf of its type, kept so that its call (or its turn
    on a stream) answers INVALID_ARGUMENT instead of failing inside grpc as INTERNAL."""

    __slots__ = ("kind", "why")

    def __init__(self, kind: str, why: str) -> None:
        self.kind, self.why = kind, why

    def error(self) -> InvalidInput:
        return InvalidInput(f"the message is not a valid {self.kind} protobuf message: {self.why}")


def parser(cls: Any) -> Callable[[bytes], Any]:
    """`cls.FromString`, but a message that does not parse becomes a `Malformed`."""
    kind = cls.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as e:
            return Malformed(kind, str(e) or "cannot decode")

    return parse


def value(p: Any) -> Any:
    """One `InferParameter` (or `ModelRepositoryParameter`) as a plain value (which oneof
    field is set decides the type)."""
    which = p.WhichOneof(_ONEOF)
    return None if which is None else getattr(p, which)


def parameters(m: Any, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """An `InferParameter` (or `ModelRepositoryParameter`) map as plain values: every entry,
    or only `keys` (faster: a membership test is the cheapest look into a protobuf map)."""
    if not m:
        return {}
    if keys is None:
        return {key: value(p) for key, p in m.items()}
    return {key: value(m[key]) for key in keys if key in m}


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


def _finite_raw(raw: bytes, count: int, arr: np.ndarray) -> bool:
    """`finite(arr)` of a raw FP32 blob; a few values are checked as Python floats (exact:
    float32 to float keeps NaN and infinity), cheaper than a numpy reduction."""
    if count <= _SMALL:
        return all(map(math.isfinite, _UNPACK[count](raw)))
    return finite(arr)


def _input(i: int, t: Any, raw: Any) -> tuple[str, np.ndarray]:
    """One input tensor as (name, float32 array of its shape); `raw` its blob or None."""
    name = t.name
    if not name:
        raise InvalidInput(f"inputs[{i}].name must be a non-empty string")
    if t.datatype != FP32:
        raise bad_datatype(f"input {name!r}", t.datatype)
    shape = tuple(t.shape[:])
    if shape and min(shape) < 0:
        raise bad_shape(f"input {name!r}")
    count = math.prod(shape)
    if raw is not None:
        if t.HasField("contents"):
            raise InvalidInput(f"input {name!r} has contents while raw_input_contents is used")
        if len(raw) != count * 4:
            raise bad_byte_size(f"input {name!r}", f"raw_input_contents[{i}]", len(raw), shape)
        arr = np.frombuffer(raw, dtype=_LE_FP32).reshape(shape)
        ok = _finite_raw(raw, count, arr)
    elif t.HasField("contents"):
        arr = _contents(f"input {name!r}", t, count).reshape(shape)
        ok = finite(arr)
    else:
        raise InvalidInput(f"input {name!r} has neither contents nor raw_input_contents")
    if not ok:
        raise not_finite(f"input {name!r}")
    return name, arr


def decode_request(req: Any) -> InferRequest:
    """A `ModelInferRequest` as the protocol's request (FP32 arrays by input name)."""
    tensors = req.inputs
    n = len(tensors)
    if not n:
        raise InvalidInput("inputs must be a non-empty list of tensors")
    raw = req.raw_input_contents
    if raw and len(raw) != n:
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {n} inputs: send one per input, "
            "in input order"
        )
    blobs = raw[:] if raw else [None] * n
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(tensors):
        name, arr = _input(i, t, blobs[i])
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears twice")
        inputs[name] = arr
    outputs: list[RequestedOutput] | None = None
    wanted = req.outputs
    if wanted:
        seen: set[str] = set()
        # binary: gRPC carries every tensor as raw bytes (this sizes the answer, protocol.py)
        outputs = [
            requested_output(o.name, parameters(o.parameters), seen, binary=True) for o in wanted
        ]
    return infer_request(req.id or None, inputs, outputs, True, parameters(req.parameters, _KNOWN))


def tensor_bytes(req: Any) -> int:
    """The input bytes a `ModelInferRequest` carries (what makes a message large), counted
    without serialising it (ByteSize would copy the whole message)."""
    raw = req.raw_input_contents
    if raw:
        return sum(map(len, raw))
    return sum(t.contents.ByteSize() for t in req.inputs if t.HasField("contents"))


def _set_parameter(p: Any, value: Any) -> None:
    if type(value) is bool:
        p.bool_param = value
    elif type(value) is int:
        p.int64_param = value
    elif type(value) is float:
        p.double_param = value
    else:
        p.string_param = str(value)


def encode_response(resp: Any, name: str, version: int, request_id: str | None,
                    out: InferOutcome) -> Any:  # fmt: skip
    """Fill the `ModelInferResponse` `resp`: outputs as raw little-endian bytes, in request
    order, and the response parameters. (Filled in place: a stream response holds one.)"""
    resp.model_name = name
    resp.model_version = str(version)
    if request_id:
        resp.id = request_id
    outputs, raw = resp.outputs, resp.raw_output_contents
    for o, arr in out.tensors:
        a = np.ascontiguousarray(arr, dtype=_LE_FP32)
        outputs.add(name=o.name, datatype=FP32, shape=a.shape)
        raw.append(a.tobytes())
    for key, v in out.parameters.items():
        _set_parameter(resp.parameters[key], v)
    return resp
