"""Model control on the native API: the repository index, load and unload (docs/API.md).

The work is app/inference/control.py's; this module only speaks /v1 JSON. Load and unload
need PEEPHOLE_MODEL_CONTROL=explicit (409 otherwise: in poll mode the repository decides).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from app.api.common import errors
from app.api.deps import ControlDep
from app.api.wire import NumpyJSONResponse, decode_json
from app.inference.control import ModelControl, VersionStatus
from app.sessions.base import iso

router = APIRouter(tags=["model control"])


class ControlRequest(BaseModel):
    """Optional body of load and unload: one version (all of the model's when absent)."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"version": 2}, {}]}
    )

    version: StrictInt | None = Field(default=None, ge=1)


class VersionEntry(BaseModel):
    version: int
    state: Literal["ready", "loading", "draining", "unloaded", "refused", "available"] = Field(
        description="ready: serving; loading: validating and warming up; draining: unloaded, "
        "its sessions still step until drain_deadline; unloaded: freed (its sessions answer "
        "410); refused: failed validation (see reason); available: in the repository, not "
        "loaded"
    )
    reason: str | None = None
    drain_deadline: str | None = Field(default=None, examples=["2024-05-01T12:05:00.000Z"])


class ModelEntry(BaseModel):
    name: str
    default_version: int | None = Field(description="the highest ready version; null if none")
    versions: list[VersionEntry]


class Repository(BaseModel):
    mode: Literal["none", "poll", "explicit"]
    models: list[ModelEntry]


def _version(s: VersionStatus) -> dict[str, Any]:
    out: dict[str, Any] = {"version": s.version, "state": s.state}
    if s.reason:
        out["reason"] = s.reason
    if s.deadline is not None:
        out["drain_deadline"] = iso(s.deadline)
    return out


def _models(control: ModelControl, statuses: list[VersionStatus]) -> list[dict[str, Any]]:
    names = sorted({s.name for s in statuses})
    return [
        {
            "name": n,
            "default_version": control.registry.default_version(n),
            "versions": [_version(s) for s in statuses if s.name == n],
        }
        for n in names
    ]


def _model(control: ModelControl, name: str, statuses: list[VersionStatus]) -> dict[str, Any]:
    found = _models(control, statuses)
    return found[0] if found else {"name": name, "default_version": None, "versions": []}


async def _body(request: Request) -> ControlRequest:
    raw = await request.body()
    return ControlRequest.model_validate(decode_json(raw) if raw.strip() else {})


_ACTION: dict[str, Any] = {
    "response_model": None,
    "responses": {200: {"model": ModelEntry}, **errors(404, 409, 422)},
    "openapi_extra": {
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": ControlRequest.model_json_schema()}},
        }
    },
}


@router.get(
    "/v1/repository", response_model=None, responses={200: {"model": Repository}, **errors()}
)
async def repository(control: ControlDep) -> NumpyJSONResponse:
    """Every model version in the repository or held by this server, with its state: what
    serves (ready), what drains and until when, what was refused and why."""
    statuses = await control.index()
    return NumpyJSONResponse({"mode": control.mode, "models": _models(control, statuses)})


@router.post("/v1/models/{name}/load", **_ACTION)
async def load(name: str, request: Request, control: ControlDep) -> NumpyJSONResponse:
    """Load every version of `name` in the repository, or `version`: each is validated (card,
    sha256, a warm-up run) before it serves, and the highest ready version is the default.

    422 names each version that failed validation (what served before keeps serving); 409
    unless PEEPHOLE_MODEL_CONTROL=explicit.
    """
    req = await _body(request)
    return NumpyJSONResponse(_model(control, name, await control.load(name, req.version)))


@router.post("/v1/models/{name}/unload", **_ACTION)
async def unload(name: str, request: Request, control: ControlDep) -> NumpyJSONResponse:
    """Unload every ready version of `name`, or `version`. A version with live sessions
    drains: nothing new starts on it, its sessions keep stepping until they end or
    PEEPHOLE_DRAIN_SECONDS pass; then it is freed and they answer 410.
    """
    req = await _body(request)
    return NumpyJSONResponse(_model(control, name, await control.unload(name, req.version)))
