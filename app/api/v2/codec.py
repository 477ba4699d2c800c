"""Open Inference Protocol (KServe v2) tensors <-> numpy, as Triton's HTTP endpoint words them.

A request body is a JSON header, optionally followed by raw tensor bytes (the binary tensor
data extension): the `Inference-Header-Content-Length` header says where the JSON ends, and
each input with `parameters.binary_data_size` takes its bytes, in input order, from what
follows. Binary tensors are little-endian, row-major, and viewed with `np.frombuffer` (no
copy); JSON `data` (flat or nested, row-major) is type-checked and converted in bulk, never
element by element in Python. The model-specific checks (which names, which shapes) are
protocol.py's, shared with gRPC; this module knows only the JSON wire format. Every problem
is an `InvalidInput` (400 on /v2) with a message that names the tensor.
"""

from __future__ import annotations

import math
import zlib
from itertools import chain
from typing import Any

import numpy as np
import orjson

from app.api.numbers import NumberArray
from app.api.v2.protocol import (
    FP32,
    InferRequest,
    RequestedOutput,
    check_byte_size,
    check_datatype,
    check_finite,
    check_shape,
    flag,
    infer_request,
    kind,
    requested_output,
)
from app.api.wire import NotJSON, loads
from app.errors import InvalidInput, PayloadTooLarge

_LE_FP32 = np.dtype("<f4")
_NUMBER_TYPES = frozenset({int, float})
_LIST = {list}

__all__ = ["FP32", "InferRequest", "RequestedOutput", "decode_request", "encode_response"]


def decompress(body: bytes | bytearray, encoding: str | None, limit: int) -> bytes | bytearray:
    """Undo `Content-Encoding: gzip|deflate` (tritonclient's request compression), bounded by
    `limit` so a small compressed body cannot expand past PEEPHOLE_MAX_BODY_BYTES."""
    if not encoding or encoding.strip().lower() == "identity":
        return body
    enc = encoding.strip().lower()
    if enc not in ("gzip", "deflate"):
        raise InvalidInput(f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
    d = zlib.decompressobj(wbits=47)  # 47: accept both zlib and gzip framing
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidInput(f"the body is not valid {enc} data: {e}") from e
    if len(out) > limit:
        raise PayloadTooLarge(f"request body over the limit of {limit} bytes once decompressed")
    return out


def _split(
    body: bytes | bytearray, header_length: str | None
) -> tuple[bytes | bytearray, memoryview]:
    """(JSON header, binary tail) per `Inference-Header-Content-Length`."""
    if header_length is None:
        return body, memoryview(b"")
    n = header_length.strip()
    if not n.isdigit() or not n.isascii() or int(n) > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {header_length!r} must be an integer between 0 "
            f"and the body length ({len(body)})"
        )
    view = memoryview(body)
    return bytes(view[: int(n)]), view[int(n) :]


def _object(v: Any, where: str) -> dict[str, Any]:
    if v is None:
        return {}
    if type(v) is not dict:
        raise InvalidInput(f"{where} must be an object, got {kind(v)}")
    return v


def _json_numbers(data: Any, count: int, where: str) -> np.ndarray:
    """Flat or nested (row-major) JSON numbers -> flat float32; exactly `count` of them."""
    if type(data) is NumberArray:  # all numbers, all at one depth (app/api/numbers.py)
        if data.values.size != count:
            raise InvalidInput(
                f"{where}: shape holds {count} elements but data has {data.values.size}"
            )
        return data.values
    if type(data) is not list:
        raise InvalidInput(f"{where}.data must be a list of numbers, got {kind(data)}")
    level: list[Any] = data
    while level and type(level[0]) is list:  # nested: flatten one level at a time, in C
        if set(map(type, level)) != _LIST:
            raise InvalidInput(f"{where}.data mixes lists and numbers at one nesting level")
        level = list(chain.from_iterable(level))
    types = set(map(type, level))
    if not types <= _NUMBER_TYPES:
        bad = next(iter(types - _NUMBER_TYPES))
        raise InvalidInput(
            f"{where}.data: an FP32 tensor takes only JSON numbers, found "
            f"{kind(next(v for v in level if type(v) is bad))}"
        )
    if len(level) != count:
        raise InvalidInput(f"{where}: shape holds {count} elements but data has {len(level)}")
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            return np.array(level, dtype=np.float32)
        except OverflowError as e:  # integers beyond the float range
            raise InvalidInput(f"{where}.data: a number is out of range") from e


def _input(t: Any, i: int, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    """One input tensor -> (name, float32 array of its shape, new binary offset)."""
    where = f"inputs[{i}]"
    if type(t) is not dict:
        raise InvalidInput(f"{where} must be an object, got {kind(t)}")
    name = t.get("name")
    if type(name) is not str or not name:
        raise InvalidInput(f"{where}.name must be a non-empty string")
    where = f"input {name!r}"
    check_datatype(where, t.get("datatype"))
    shape = check_shape(where, t.get("shape"))
    count = math.prod(shape)
    params = _object(t.get("parameters"), f"{where}.parameters")
    size = params.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer")
        if "data" in t:
            raise InvalidInput(f"{where} has both data and binary_data_size; send one")
        check_byte_size(where, "binary_data_size", size, shape, count)
        if offset + size > len(binary):
            raise InvalidInput(
                f"{where}: binary_data_size {size} runs past the end of the binary data "
                f"({len(binary) - offset} bytes left)"
            )
        arr = np.frombuffer(binary, dtype=_LE_FP32, count=count, offset=offset)
        offset += size
    elif "data" in t:
        arr = _json_numbers(t["data"], count, where)
    else:
        raise InvalidInput(f"{where} has neither data nor parameters.binary_data_size")
    check_finite(where, arr)
    return name, arr.reshape(shape), offset


def _outputs(v: Any, binary_default: bool) -> list[RequestedOutput] | None:
    """Requested outputs; `binary_data` of each, else the request's `binary_data_output`."""
    if v is None:
        return None
    if type(v) is not list:
        raise InvalidInput(f"outputs must be a list of objects, got {kind(v)}")
    out: list[RequestedOutput] = []
    seen: set[str] = set()
    for i, o in enumerate(v):
        if type(o) is not dict or type(o.get("name")) is not str:
            raise InvalidInput(f"outputs[{i}] must be an object with a string name")
        params = _object(o.get("parameters"), f"outputs[{i}].parameters")
        binary = params.get("binary_data")
        if binary is not None and type(binary) is not bool:
            raise InvalidInput(f"outputs[{i}].parameters.binary_data must be a boolean")
        binary = binary_default if binary is None else binary
        out.append(requested_output(o["name"], params, seen, binary))
    return out


def decode_request(body: bytes | bytearray, header_length: str | None = None) -> InferRequest:
    """Parse an infer request body (JSON, or JSON + binary tensors)."""
    head, binary = _split(body, header_length)
    if not head:
        raise InvalidInput("the request body is empty; send an inference request object")
    try:
        req = loads(head)
    except NotJSON as e:
        raise InvalidInput(
            f"the inference header is not valid JSON (NaN and infinity are refused): {e}"
        ) from e
    if type(req) is not dict:
        raise InvalidInput(f"the inference request must be a JSON object, got {kind(req)}")
    rid = req.get("id")
    if rid is not None and type(rid) is not str:
        raise InvalidInput("id must be a string")
    params = _object(req.get("parameters"), "parameters")
    raw_inputs = req.get("inputs")
    if type(raw_inputs) is not list or not raw_inputs:
        raise InvalidInput("inputs must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(raw_inputs):
        name, arr, offset = _input(t, i, binary, offset)
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears twice")
        inputs[name] = arr
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data follow the inference header that no "
            "input claims (check binary_data_size and Inference-Header-Content-Length)"
        )
    binary_output = flag(params, "binary_data_output")
    outputs = _outputs(req.get("outputs"), binary_output)
    return infer_request(rid, inputs, outputs, binary_output, params)


def encode_response(
    header: dict[str, Any], tensors: list[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None) for outputs `(name, float32 array, binary?)`.

    JSON outputs carry flat row-major `data`; binary ones `parameters.binary_data_size` and
    their little-endian bytes after the header, in output order, as Triton sends them.
    """
    outputs: list[dict[str, Any]] = []
    blobs: list[memoryview] = []
    for name, arr, binary in tensors:
        a = np.ascontiguousarray(arr, dtype=_LE_FP32)
        entry: dict[str, Any] = {"name": name, "datatype": FP32, "shape": list(a.shape)}
        if binary:
            entry["parameters"] = {"binary_data_size": a.nbytes}
            blobs.append(a.data.cast("B"))
        else:
            entry["data"] = a.reshape(-1)
        outputs.append(entry)
    head = orjson.dumps({**header, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)
