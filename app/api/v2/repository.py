"""The KServe v2 / Triton model repository extension over REST: index, load, unload.

Bodies and errors as Triton's HTTP endpoint has them (`tritonclient.http` works unchanged:
`get_model_repository_index`, `load_model`, `unload_model`): the index is a JSON list of
`{"name", "version", "state", "reason"}`; load and unload answer 200 with an empty body, or
`{"error"}` with 400 (a version failed validation, an unsupported parameter), 404 (no such
model) or 503 (not PEEPHOLE_MODEL_CONTROL=explicit). The meaning, shared with gRPC, is
app/api/v2/model_repository.py's; this module only speaks JSON.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import ControlDep
from app.api.v2 import model_repository
from app.api.v2.router import _errors, _json
from app.api.wire import decode_json
from app.errors import InvalidInput
from app.inference.control import TRITON_STATE

router = APIRouter(prefix="/v2/repository", tags=["v2 (KServe / Triton)"])

_PARAMS = {
    "type": "object",
    "properties": {
        "version": {
            "anyOf": [{"type": "integer", "minimum": 1}, {"type": "string"}],
            "description": "Peephole: one version (all versions of the model when absent)",
        },
        "unload_dependents": {"type": "boolean", "description": "accepted; no model has any"},
    },
}
_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"parameters": _PARAMS}}
            }
        },
    }
}
_INDEX_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "ready": {"type": "boolean", "description": "only ready versions"}
                    },
                }
            }
        },
    }
}
_ENTRY = {
    "type": "object",
    "required": ["name", "version", "state", "reason"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "state": {"type": "string", "enum": sorted(set(TRITON_STATE.values()))},
        "reason": {"type": "string"},
    },
}


async def _object(request: Request) -> dict[str, Any]:
    """The JSON object body; an empty body is `{}` (tritonclient sends one for the index)."""
    raw = await request.body()
    body = decode_json(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    return body


def _params(body: dict[str, Any]) -> dict[str, Any]:
    params = body.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput("parameters must be a JSON object")
    return params


@router.post(
    "/index",
    response_model=None,
    openapi_extra=_INDEX_BODY,
    responses={
        200: {
            "description": "Every version in the repository or held, with its state",
            "content": {"application/json": {"schema": {"type": "array", "items": _ENTRY}}},
        },
        **_errors(400),
    },
)
async def index(request: Request, control: ControlDep) -> Response:
    """The repository index, loaded or not (`"ready": true`: only versions ready to serve)."""
    body = await _object(request)
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("ready must be true or false")
    return _json(await model_repository.index(control, ready))  # type: ignore[arg-type]


_ACTION: dict[str, Any] = {
    "response_model": None,
    "response_class": Response,
    "openapi_extra": _BODY,
    "responses": {200: {"description": "Done (empty body)"}, **_errors(400, 404, 503)},
}


@router.post("/models/{name}/load", **_ACTION)
async def load(name: str, request: Request, control: ControlDep) -> Response:
    """Load every version of the model in the repository (or `parameters.version`): each is
    validated (card, sha256, warm-up run) before it serves. Loading a draining version with
    the same files makes it serve again."""
    await model_repository.change(control, "load", name, _params(await _object(request)))
    return Response(status_code=200)


@router.post("/models/{name}/unload", **_ACTION)
async def unload(name: str, request: Request, control: ControlDep) -> Response:
    """Unload the model (or `parameters.version`). Sequences on it keep their version and
    drain until they end or PEEPHOLE_DRAIN_SECONDS pass."""
    await model_repository.change(control, "unload", name, _params(await _object(request)))
    return Response(status_code=200)
