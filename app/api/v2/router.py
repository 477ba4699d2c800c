"""The Open Inference Protocol (KServe v2) as Triton's HTTP endpoint speaks it (docs/API.md).

A thin transport layer: `codec.py` turns the JSON (+ binary tensors) wire format into an
`InferRequest` of numpy arrays and back; `protocol.py`, shared with the gRPC endpoint
(app/api/grpc), gives it its meaning (tensors, outputs, limits, sequences in the session
store); the data plane does the work, exactly as for /v1. Errors are `{"error": ...}`
(app/errors.py words every /v2 error, those of the auth and body-limit middlewares included).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import DataPlaneDep
from app.api.v2 import codec as v2codec
from app.api.v2 import protocol
from app.api.wire import SPLIT_BYTES, request_body
from app.dataplane import DataPlane
from app.errors import NotReady

router = APIRouter(prefix="/v2", tags=["v2 (KServe / Triton)"])

HEADER_LENGTH = "Inference-Header-Content-Length"

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_WHY = {
    400: "Bad request: malformed tensors, unknown input, non-finite numbers, unknown sequence",
    401: "Missing or wrong API key",
    404: "Unknown model or version",
    410: "The sequence's model version was unloaded and its drain ended",
    413: "Body, batch or time steps over the limits",
    429: "Session capacity reached (see Retry-After)",
    503: "Not ready, the session store is unreachable, or the sequence's model version is not "
    "loaded on this server yet (see Retry-After)",
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
                                "offset": {"type": "integer", "minimum": 0},
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
    return _json(
        {
            "name": protocol.SERVER_NAME,
            "version": request.app.version,
            "extensions": protocol.EXTENSIONS,
        }
    )


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
    return _json(protocol.model_metadata(dp, name, None))


@router.get("/models/{name}/versions/{version}", **_META_DOC)
async def model_version_metadata(name: str, version: str, dp: DataPlaneDep) -> Response:
    """As `/v2/models/{name}`, for one version."""
    return _json(protocol.model_metadata(dp, name, version))


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


async def _infer(request: Request, dp: DataPlane, name: str, version: str | None) -> Response:
    resolved = protocol.resolve(dp, name, version)
    body = v2codec.decompress(
        await request_body(request),
        request.headers.get("content-encoding"),
        dp.settings.max_body_bytes,
    )
    head_length = request.headers.get(HEADER_LENGTH)
    if len(body) < SPLIT_BYTES:
        req = v2codec.decode_request(body, head_length)
    else:  # off the event loop, as every large body is parsed
        req = await asyncio.to_thread(v2codec.decode_request, body, head_length)
    engine, out = await protocol.run(dp, name, version, resolved, req)
    header: dict[str, Any] = {"model_name": engine.name, "model_version": str(engine.version)}
    if req.id:
        header["id"] = req.id
    if out.parameters:
        header["parameters"] = out.parameters
    tensors = [(o.name, arr, o.binary) for o, arr in out.tensors]
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
        **_errors(400, 404, 410, 413, 429, 503),
    },
}


@router.post("/models/{name}/infer", **_INFER)
async def infer(name: str, request: Request, dp: DataPlaneDep) -> Response:
    """Run the default version: `x` [batch, time, input_size] (+ optional state tensors).

    With `parameters.sequence_id` the request continues a sequence whose state the server
    keeps (`sequence_start` begins or restarts it, `sequence_end` frees it); batch 1. The
    optional `parameters.offset` makes a retried step safe, as /v1 steps' `offset`.
    """
    return await _infer(request, dp, name, None)


@router.post("/models/{name}/versions/{version}/infer", **_INFER)
async def infer_version(name: str, version: str, request: Request, dp: DataPlaneDep) -> Response:
    """As `/v2/models/{name}/infer`, on one version."""
    return await _infer(request, dp, name, version)
