"""The Open Inference Protocol (KServe v2) itself, whatever carries it: REST or gRPC.

The transports decode their wire format (JSON + binary tensors in `codec.py`, protobuf in
`app/api/grpc/codec.py`) into an `InferRequest` of numpy arrays and plain parameter values,
and this module gives it its meaning: which tensors the model takes (`x` FP32 [batch, time,
input_size] and, optionally, each state tensor by its card name), which outputs exist, the
limits, and sequences. Every check and every message is written once here, so that the same
mistake reads the same over REST and gRPC.

Sequences (`sequence_id` uint64 or string, `sequence_start`, `sequence_end`, batch 1, as
Triton's sequence batcher) keep their state in the SAME session store as /v1 sessions, under
an id derived from model, the version the request names (if any) and sequence id
(`sequence_key`); a sequence stays on the version it started on, whatever the default
becomes and while that version drains (app/inference/control.py). They count against
PEEPHOLE_MAX_SESSIONS, expire after the TTL, are shared by replicas on the Redis store, and a
sequence started over one transport continues over the other. The optional `offset` parameter
gives a step /v1's retry guarantee (DataPlane.step): a retry of the last step is answered
again without being applied twice; the offset after the step is answered in the response
parameters.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from math import isfinite
from typing import Any

import numpy as np

from app.api.numbers import NumberArray
from app.api.wire import check_response_size, json_size
from app.dataplane import MAX_OFFSET, DataPlane
from app.errors import InvalidInput, ModelNotFound, SessionNotFound, StoreUnavailable
from app.inference.engine import Engine

log = logging.getLogger("peephole.v2")

SERVER_NAME = "peephole"
EXTENSIONS = ["binary_tensor_data", "sequence", "model_repository"]
PLATFORM = "onnxruntime_onnx"
FP32 = "FP32"
FP32_BYTES = 4
MAX_SEQUENCE_ID_CHARS = 256
_UINT64_MAX = 2**64 - 1
# Triton's datatype names, to tell "wrong datatype" from "not a datatype" in messages.
DATATYPES = frozenset(
    {
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BF16",
        "BYTES",
    }
)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool = False  # as bytes: REST's binary tensor data extension; gRPC: always


@dataclass(slots=True)
class InferRequest:
    """A decoded infer request: FP32 arrays by input name and what to send back."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None  # None: every output (Triton's default)
    binary_output: bool  # request-level `binary_data_output`, the default of each output
    sequence_id: int | str | None  # None: not a sequence request (Triton: 0 or "")
    sequence_start: bool
    sequence_end: bool
    offset: int | None = None  # where the client believes its sequence stands


@dataclass(slots=True)
class InferOutcome:
    """What to send back: the outputs asked for, in order, and the response parameters."""

    tensors: list[tuple[RequestedOutput, np.ndarray]]
    parameters: dict[str, Any] = field(default_factory=dict)


# -- values -----------------------------------------------------------------------------

_KIND = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    dict: "an object",
    list: "a list",
    NumberArray: "a list",  # a large JSON number array, read straight into float32
    type(None): "null",
}


def kind(v: Any) -> str:
    """How a message names the type of a value."""
    return _KIND.get(type(v), type(v).__name__)


def flag(params: dict[str, Any], key: str) -> bool:
    v = params.get(key, False)
    if type(v) is not bool:
        raise InvalidInput(f"parameters.{key} must be a boolean, got {kind(v)}")
    return v


def sequence_id(params: dict[str, Any]) -> int | str | None:
    """uint64 or string; 0 and "" mean "no sequence", as in Triton."""
    v = params.get("sequence_id")
    if v is None:
        return None
    if type(v) is int:
        if not 0 <= v <= _UINT64_MAX:
            raise InvalidInput("parameters.sequence_id must be an unsigned 64-bit integer")
        return v or None
    if type(v) is str:
        if len(v) > MAX_SEQUENCE_ID_CHARS:
            raise InvalidInput(
                f"parameters.sequence_id is longer than {MAX_SEQUENCE_ID_CHARS} characters"
            )
        return v or None
    raise InvalidInput(
        f"parameters.sequence_id must be an unsigned integer or a string, got {kind(v)}"
    )


def step_offset(params: dict[str, Any]) -> int | None:
    """The optional step offset: a non-negative integer, as /v1 steps take it."""
    v = params.get("offset")
    if v is None:
        return None
    if type(v) is not int or not 0 <= v <= MAX_OFFSET:
        raise InvalidInput(f"parameters.offset must be an integer between 0 and {MAX_OFFSET}")
    return v


def infer_request(rid: str | None, inputs: dict[str, np.ndarray],
                  outputs: list[RequestedOutput] | None, binary_output: bool,
                  params: dict[str, Any]) -> InferRequest:  # fmt: skip
    """The request, its sequence parameters checked (`params`: plain values by name)."""
    return InferRequest(
        id=rid,
        inputs=inputs,
        outputs=outputs,
        binary_output=binary_output,
        sequence_id=sequence_id(params),
        sequence_start=flag(params, "sequence_start"),
        sequence_end=flag(params, "sequence_end"),
        offset=step_offset(params),
    )


def bad_datatype(where: str, dtype: Any) -> InvalidInput:
    known = type(dtype) is str and dtype in DATATYPES
    what = f"datatype {dtype}" if known else f"datatype {dtype!r} (unknown)"
    return InvalidInput(f"{where} has {what}; the model expects {FP32}")


def check_datatype(where: str, dtype: Any) -> None:
    if dtype != FP32:
        raise bad_datatype(where, dtype)


def bad_shape(where: str) -> InvalidInput:
    return InvalidInput(f"{where}.shape must be a list of non-negative integers")


def check_shape(where: str, v: Any) -> tuple[int, ...]:
    if type(v) is not list or any(type(d) is not int or d < 0 for d in v):
        raise bad_shape(where)
    return tuple(v)


def bad_byte_size(where: str, what: str, size: int, shape: tuple[int, ...]) -> InvalidInput:
    """Raw FP32 bytes must fill the shape exactly."""
    need = math.prod(shape) * FP32_BYTES
    return InvalidInput(
        f"{where}: {what} is {size} bytes but shape {list(shape)} of FP32 needs {need}"
    )


def check_byte_size(where: str, what: str, size: int, shape: tuple[int, ...], count: int) -> None:
    if size != count * FP32_BYTES:
        raise bad_byte_size(where, what, size, shape)


def finite(arr: np.ndarray) -> bool:
    """Every entry finite. One float64 sum: finite exactly when every float32 entry is (it
    cannot overflow), and one cheap reduction where isfinite().all() is two."""
    return isfinite(arr.sum(dtype=np.float64))


def not_finite(where: str) -> InvalidInput:
    return InvalidInput(f"{where}: numbers must be finite and within FP32 range")


def check_finite(where: str, arr: np.ndarray) -> None:
    if not finite(arr):
        raise not_finite(where)


def requested_output(name: str, params: dict[str, Any], seen: set[str], binary: bool = False
                     ) -> RequestedOutput:  # fmt: skip
    """One entry of a request's `outputs` (each name once; no classification extension)."""
    if params.get("classification"):
        raise InvalidInput("the classification extension is not supported")
    if name in seen:
        raise InvalidInput(f"output {name!r} is requested twice")
    seen.add(name)
    return RequestedOutput(name, binary)


# -- models -----------------------------------------------------------------------------


def model_metadata(dp: DataPlane, name: str, version: str | None) -> dict[str, Any]:
    """Tensors of a model version: `x` in, `y` out, state tensors both ways."""
    engine = dp.model(name, version)
    states = [
        {"name": s.name, "datatype": FP32, "shape": [-1, *s.shape]} for s in engine.state_specs
    ]
    x = {"name": "x", "datatype": FP32, "shape": [-1, -1, engine.input_size]}
    y = {"name": "y", "datatype": FP32, "shape": [-1, -1, engine.output_size]}
    return {
        "name": engine.name,
        "versions": [str(v) for v in dp.registry.versions(engine.name)],
        "platform": PLATFORM,
        "inputs": [x, *states],
        "outputs": [y, *states],
    }


def model_inputs(
    engine: Engine, inputs: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """x [B, T, I] and the optional state tensors [B, *shape] (missing ones start at zeros)."""
    specs = {s.name: s for s in engine.state_specs}
    unknown = sorted(set(inputs) - {"x", *specs})
    if unknown:
        raise InvalidInput(
            f"unknown input {unknown[0]!r}: model {engine.name} takes x and optionally "
            f"{', '.join(specs)}"
        )
    x = inputs.get("x")
    if x is None:
        raise InvalidInput("input 'x' is missing")
    if x.ndim != 3 or x.shape[2] != engine.input_size:
        raise InvalidInput(
            f"input 'x' has shape {list(x.shape)}; expected [batch, time, {engine.input_size}]"
        )
    B = x.shape[0]
    if B == 0 or x.shape[1] == 0:
        raise InvalidInput("input 'x' needs at least one sequence and one time step")
    given = {k: v for k, v in inputs.items() if k in specs}
    if not given:
        return x, None
    states = engine.initial_state(B)
    for k, v in given.items():
        if v.shape != (B, *specs[k].shape):
            raise InvalidInput(
                f"input {k!r} has shape {list(v.shape)}; expected {[B, *specs[k].shape]}"
            )
        states[k] = v
    return x, states


def requested_outputs(engine: Engine, req: InferRequest) -> list[RequestedOutput]:
    """The outputs to send, in order: those asked for, else every one (Triton's default)."""
    names = ["y", *(s.name for s in engine.state_specs)]
    if req.outputs is None:
        return [RequestedOutput(n, req.binary_output) for n in names]
    for o in req.outputs:
        if o.name not in names:
            raise InvalidInput(
                f"unknown output {o.name!r}: model {engine.name} has {', '.join(names)}"
            )
    return req.outputs


# -- inference --------------------------------------------------------------------------


def sequence_key(name: str, version: int | str | None, seq: int | str) -> str:
    """The session store id of a sequence: model, the version the request names ('-' for
    none: the sequence stays on the version it started on), id kind (u: uint64, s: string)."""
    kind_ = "u" if isinstance(seq, int) else "s"
    v = "-" if version is None else str(int(version)) if str(version).isdigit() else version
    return f"v2:{name}:{v}:{kind_}:{seq}"


async def _end(dp: DataPlane, key: str) -> None:
    """Free a sequence's state. Already gone is fine; a store failure only delays it to the
    TTL (the answer is computed and the state applied, so an error would invite a double step)."""
    try:
        await dp.delete_session(key)
    except SessionNotFound:
        pass
    except StoreUnavailable as e:
        log.warning("sequence %s not freed (expires with its TTL): %s", key, e.detail)


def _sequence_input(req: InferRequest, x: np.ndarray, states: dict[str, np.ndarray] | None
                    ) -> None:  # fmt: skip
    if x.shape[0] != 1:
        raise InvalidInput(f"a sequence request takes batch 1, got {x.shape[0]}")
    if states is not None and not req.sequence_start:
        raise InvalidInput("state inputs are accepted only on the start of a sequence")
    if req.sequence_start and req.offset:
        raise InvalidInput("parameters.offset of a sequence's start must be 0")


async def _start(
    dp: DataPlane,
    engine: Engine,
    key: str,
    req: InferRequest,
    x: np.ndarray,
    states: dict[str, np.ndarray] | None,
) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """The first request of a sequence (batch 1): y [1, T, O], the state after it [1, *shape],
    and the sequence's offset after it."""
    if req.sequence_end:  # a whole sequence in one request
        await _end(dp, key)  # a live sequence with this id is over
        r = await dp.infer(engine, x, states)
        return r.y, r.states, x.shape[1]
    init = None if states is None else {k: v[0] for k, v in states.items()}
    await dp.create_session(engine.name, engine.version, state=init, session_id=key)
    step = await dp.step(key, x[0], req.offset)
    state = {k: v[None] for k, v in step.session.state.items()}
    return step.outputs[None], state, step.session.offset


def answer_size(engine: Engine, x: np.ndarray, wanted: list[RequestedOutput]) -> int:
    """An upper bound of the answer's size from the shapes alone: `y` [B, T, O] and the state
    tensors, FP32_BYTES a number when sent as bytes (binary; gRPC's always are), at most
    NUMBER_TEXT_BYTES as JSON."""
    per = {"y": x.shape[1] * engine.output_size}
    per.update({s.name: math.prod(s.shape) for s in engine.state_specs})
    total = 1024
    for o in wanted:
        n = x.shape[0] * per.get(o.name, 0)
        total += FP32_BYTES * n if o.binary else json_size(n, 0)
    return total


def check_limits(dp: DataPlane, engine: Engine, x: np.ndarray, wanted: list[RequestedOutput]
                 ) -> None:  # fmt: skip
    """Batch and steps (413 before a sequence takes a slot in the store), and the answer's
    size (413 before anything runs)."""
    dp.check_limits(x.shape[0], x.shape[1])
    check_response_size(answer_size(engine, x, wanted), dp.settings.max_response_bytes)


async def _continue(
    dp: DataPlane, name: str, version: str | None, req: InferRequest,
    resolved: Engine | ModelNotFound,
) -> tuple[Engine, InferOutcome]:  # fmt: skip
    """A later request of a sequence, on the version the sequence is pinned to (a draining
    one included: a new default or an unload never moves a live sequence)."""
    seq = req.sequence_id
    assert seq is not None
    key = sequence_key(name, version, seq)
    seen: list[tuple[Engine, list[RequestedOutput]]] = []

    def parse(engine: Engine) -> np.ndarray:
        x, states = model_inputs(engine, req.inputs)
        _sequence_input(req, x, states)
        wanted = requested_outputs(engine, req)
        seen.append((engine, wanted))
        check_limits(dp, engine, x, wanted)
        chunk: np.ndarray = x[0]
        return chunk

    try:
        step = await dp.step_parsed(key, parse, req.offset)
    except SessionNotFound:
        if isinstance(resolved, ModelNotFound):
            raise resolved from None
        parse(resolved)  # malformed inputs are named first, as for any other request
        raise InvalidInput(
            f"sequence {seq!r} of model {name} is not active (unknown, ended or expired): its "
            "first request must set parameters.sequence_start"
        ) from None
    if req.sequence_end:
        await _end(dp, key)
    engine, wanted = seen[-1]
    y, states = step.outputs[None], {k: v[None] for k, v in step.session.state.items()}
    tensors = [(o, y if o.name == "y" else states[o.name]) for o in wanted]
    return engine, InferOutcome(tensors, {"offset": step.session.offset})


def resolve(dp: DataPlane, name: str, version: str | None) -> Engine | ModelNotFound:
    """The ready engine a request names, or why there is none (kept, not raised: a live
    sequence may still step on its draining version). Call it before decoding the body, so
    that an unknown model is reported first."""
    try:
        return dp.model(name, version)
    except ModelNotFound as e:
        return e


async def run(dp: DataPlane, name: str, version: str | None, resolved: Engine | ModelNotFound,
              req: InferRequest) -> tuple[Engine, InferOutcome]:  # fmt: skip
    """Run a decoded request addressed to name (and version): a sequence's later requests on
    the version it started on, anything else on `resolved` (from `resolve`)."""
    if req.sequence_id is not None and not req.sequence_start:
        return await _continue(dp, name, version, req, resolved)
    if isinstance(resolved, ModelNotFound):
        raise resolved
    return resolved, await _infer(dp, resolved, req, None if version is None else resolved.version)


async def _infer(
    dp: DataPlane, engine: Engine, req: InferRequest, named: int | None
) -> InferOutcome:
    """Run a decoded request on `engine`: stateless, or the start of a sequence (`named`: the
    version the request's address names, None for the default)."""
    x, states = model_inputs(engine, req.inputs)
    wanted = requested_outputs(engine, req)
    check_limits(dp, engine, x, wanted)
    params: dict[str, Any] = {}
    if req.sequence_id is None:
        if req.sequence_start or req.sequence_end:
            raise InvalidInput("sequence_start and sequence_end need a non-zero sequence_id")
        if req.offset is not None:
            raise InvalidInput("parameters.offset is for sequence requests (with sequence_id)")
        r = await dp.infer(engine, x, states)
        y, out_states = r.y, r.states
    else:  # a start (`run` sends later requests to their own version)
        _sequence_input(req, x, states)
        key = sequence_key(engine.name, named, req.sequence_id)
        y, out_states, params["offset"] = await _start(dp, engine, key, req, x, states)
    return InferOutcome([(o, y if o.name == "y" else out_states[o.name]) for o in wanted], params)
