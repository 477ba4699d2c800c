"""The Open Inference Protocol (KServe v2) as Triton's HTTP endpoint speaks it (CONTRACT s. 4).

A thin protocol layer: `app/api/v2/codec.py` turns the wire format into numpy and back, the data
plane does the work, exactly as for /v1. The model's tensors: input `x` FP32 [batch, time,
input_size] and, optionally, each state tensor by its card name ([batch, *shape]) so that a
stateless client can carry the state itself; outputs `y` FP32 [batch, time, output_size] and
the state tensors after the last step. All outputs unless `outputs` picks some (Triton).

Sequences (`parameters.sequence_id`, `sequence_start`, `sequence_end`, batch 1) keep their
state in the SAME session store as /v1 sessions, under an id derived from model, version and
sequence id: they count against PEEPHOLE_MAX_SESSIONS, expire after the TTL and are shared by
replicas on the Redis store. Errors are `{"error": ...}` (app/errors.py words every /v2 error,
those of the auth and body-limit middlewares included).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import DataPlaneDep
from app.api.v2 import codec as v2codec
from app.dataplane import DataPlane
from app.errors import InvalidInput, NotReady, SessionNotFound, StoreUnavailable
from app.inference.engine import Engine

log = logging.getLogger("peephole.v2")
router = APIRouter(prefix="/v2", tags=["v2 (KServe / Triton)"])

SERVER_NAME = "peephole"
EXTENSIONS = ["binary_tensor_data", "sequence"]
PLATFORM = "onnxruntime_onnx"
HEADER_LENGTH = "Inference-Header-Content-Length"

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_WHY = {
    400: "Bad request: malformed tensors, unknown input, non-finite numbers, unknown sequence",
    401: "Missing or wrong API key",
    404: "Unknown model or version",
    413: "Body, batch or time steps over the limits",
    429: "Session capacity reached (see Retry-After)",
    503: "Not ready, or the session store is unreachable",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these codes, in the `{"error"}` form."""
    return {
        c: {"description": _WHY[c], "content": {"application/json": {"schema": _ERROR}}}
        for c in sorted({401, *codes})
    }


_TENSOR_PROPS: dict[str, Any] = {
    "name": {"type": "string"},
    "datatype": {"type": "string"},
    "shape": {"type": "array", "items": {"type": "integer"}},
}
_TENSOR_META = {"type": "object", "properties": _TENSOR_PROPS}
_MODEL_META = {
    "type": "object",
    "required": ["name", "versions", "platform", "inputs", "outputs"],
    "properties": {
        "name": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR_META},
        "outputs": {"type": "array", "items": _TENSOR_META},
    },
}
_INFER_DOC = {
    "requestBody": {
        "required": True,
        "description": "JSON, or JSON followed by binary tensors (Inference-Header-Content-Length)",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "sequence_id": {
                                    "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]
                                },
                                "sequence_start": {"type": "boolean"},
                                "sequence_end": {"type": "boolean"},
                                "binary_data_output": {"type": "boolean"},
                            },
                        },
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype"],
                                "properties": {
                                    **_TENSOR_PROPS,
                                    "data": {"type": "array"},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


# -- server ----------------------------------------------------------------------------

# Health and readiness answer by status code with an empty body (the protocol's form).
_EMPTY: dict[str, Any] = {"response_model": None, "response_class": Response}


@router.get("", response_model=None, responses=_errors())
async def server_metadata(request: Request) -> Response:
    """Server metadata: name, version and the protocol extensions supported."""
    return _json({"name": SERVER_NAME, "version": request.app.version, "extensions": EXTENSIONS})


@router.get("/health/live", **_EMPTY)
async def live() -> Response:
    """200 while the process runs (empty body, as the protocol says)."""
    return Response(status_code=200)


@router.get("/health/ready", **_EMPTY, responses=_errors(503))
async def ready(dp: DataPlaneDep) -> Response:
    """200 when every accepted model is loaded and the session store answers, else 503."""
    ok, why = await dp.ready()
    if not ok:
        raise NotReady(why)
    return Response(status_code=200)


# -- models ----------------------------------------------------------------------------


def _meta(engine: Engine) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    states = [
        {"name": s.name, "datatype": v2codec.FP32, "shape": [-1, *s.shape]}
        for s in engine.state_specs
    ]
    x = {"name": "x", "datatype": v2codec.FP32, "shape": [-1, -1, engine.input_size]}
    y = {"name": "y", "datatype": v2codec.FP32, "shape": [-1, -1, engine.output_size]}
    return [x, *states], [y, *states]


def _model_metadata(dp: DataPlane, name: str, version: str | None) -> Response:
    engine = dp.model(name, version)
    inputs, outputs = _meta(engine)
    return _json(
        {
            "name": engine.name,
            "versions": [str(v) for v in dp.registry.versions(engine.name)],
            "platform": PLATFORM,
            "inputs": inputs,
            "outputs": outputs,
        }
    )


_META_DOC: dict[str, Any] = {
    "response_model": None,
    "responses": {
        200: {
            "description": "Model metadata",
            "content": {"application/json": {"schema": _MODEL_META}},
        },
        **_errors(404),
    },
}


@router.get("/models/{name}", **_META_DOC)
async def model_metadata(name: str, dp: DataPlaneDep) -> Response:
    """Tensors of the default (newest) version: `x` in, `y` out, state tensors both ways."""
    return _model_metadata(dp, name, None)


@router.get("/models/{name}/versions/{version}", **_META_DOC)
async def model_version_metadata(name: str, version: str, dp: DataPlaneDep) -> Response:
    """As `/v2/models/{name}`, for one version."""
    return _model_metadata(dp, name, version)


@router.get("/models/{name}/ready", **_EMPTY, responses=_errors(404))
async def model_ready(name: str, dp: DataPlaneDep) -> Response:
    """200 when the model is loaded (a served version is always loaded), 404 if unknown."""
    dp.model(name)
    return Response(status_code=200)


@router.get("/models/{name}/versions/{version}/ready", **_EMPTY, responses=_errors(404))
async def model_version_ready(name: str, version: str, dp: DataPlaneDep) -> Response:
    """As `/v2/models/{name}/ready`, for one version."""
    dp.model(name, version)
    return Response(status_code=200)


# -- inference -------------------------------------------------------------------------


def _model_inputs(
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


def sequence_key(engine: Engine, sequence_id: int | str) -> str:
    """The session store id of a sequence: model, version, id kind (u: uint64, s: string)."""
    kind = "u" if isinstance(sequence_id, int) else "s"
    return f"v2:{engine.name}:{engine.version}:{kind}:{sequence_id}"


async def _end(dp: DataPlane, key: str) -> None:
    """Free a sequence's state. Already gone is fine; a store failure only delays it to the
    TTL (the answer is computed and the state applied, so a 503 would invite a double step)."""
    try:
        await dp.delete_session(key)
    except SessionNotFound:
        pass
    except StoreUnavailable as e:
        log.warning("sequence %s not freed (expires with its TTL): %s", key, e.detail)


async def _sequence(
    dp: DataPlane,
    engine: Engine,
    req: v2codec.InferRequest,
    x: np.ndarray,
    states: dict[str, np.ndarray] | None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One request of a sequence (batch 1): y [1, T, O] and the state after it, [1, *shape]."""
    seq = req.sequence_id
    assert seq is not None
    if x.shape[0] != 1:
        raise InvalidInput(f"a sequence request takes batch 1, got {x.shape[0]}")
    if states is not None and not req.sequence_start:
        raise InvalidInput("state inputs are accepted only on the start of a sequence")
    key = sequence_key(engine, seq)
    if req.sequence_start and req.sequence_end:  # a whole sequence in one request
        await _end(dp, key)  # a live sequence with this id is over
        r = await dp.infer(engine, x, states)
        return r.y, r.states
    if req.sequence_start:
        init = None if states is None else {k: v[0] for k, v in states.items()}
        await dp.create_session(engine.name, engine.version, state=init, session_id=key)
    try:
        step = await dp.step(key, x[0])
    except SessionNotFound:
        raise InvalidInput(
            f"sequence {seq!r} of model {engine.name}/{engine.version} is not active (unknown, "
            "ended or expired): its first request must set parameters.sequence_start"
        ) from None
    if req.sequence_end:
        await _end(dp, key)
    return step.outputs[None], {k: v[None] for k, v in step.session.state.items()}


async def _infer(request: Request, dp: DataPlane, name: str, version: str | None) -> Response:
    engine = dp.model(name, version)
    body = v2codec.decompress(
        await request.body(), request.headers.get("content-encoding"), dp.settings.max_body_bytes
    )
    req = v2codec.decode_request(body, request.headers.get(HEADER_LENGTH))
    x, states = _model_inputs(engine, req.inputs)
    names = ["y", *(s.name for s in engine.state_specs)]
    wanted = req.outputs or [v2codec.RequestedOutput(n, req.binary_output) for n in names]
    for o in wanted:
        if o.name not in names:
            raise InvalidInput(
                f"unknown output {o.name!r}: model {engine.name} has {', '.join(names)}"
            )
    dp.check_limits(x.shape[0], x.shape[1])  # 413 before a sequence takes a slot in the store
    if req.sequence_id is None:
        if req.sequence_start or req.sequence_end:
            raise InvalidInput("sequence_start and sequence_end need a non-zero sequence_id")
        r = await dp.infer(engine, x, states)
        y, out_states = r.y, r.states
    else:
        y, out_states = await _sequence(dp, engine, req, x, states)
    header: dict[str, Any] = {"model_name": engine.name, "model_version": str(engine.version)}
    if req.id:
        header["id"] = req.id
    tensors = [(o.name, y if o.name == "y" else out_states[o.name], o.binary) for o in wanted]
    content, header_length = v2codec.encode_response(header, tensors)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(header_length)},
    )


_INFER: dict[str, Any] = {
    "response_model": None,
    "openapi_extra": _INFER_DOC,
    "responses": {
        200: {
            "description": "Outputs as JSON, or JSON + binary tensors (application/octet-stream)",
        },
        **_errors(400, 404, 413, 429, 503),
    },
}


@router.post("/models/{name}/infer", **_INFER)
async def infer(name: str, request: Request, dp: DataPlaneDep) -> Response:
    """Run the default version: `x` [batch, time, input_size] (+ optional state tensors).

    With `parameters.sequence_id` the request continues a sequence whose state the server
    keeps (`sequence_start` begins or restarts it, `sequence_end` frees it); batch 1.
    """
    return await _infer(request, dp, name, None)


@router.post("/models/{name}/versions/{version}/infer", **_INFER)
async def infer_version(name: str, version: str, request: Request, dp: DataPlaneDep) -> Response:
    """As `/v2/models/{name}/infer`, on one version."""
    return await _infer(request, dp, name, version)
