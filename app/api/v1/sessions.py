"""Streaming sessions: create, steps, inspect, export, reset, delete (the WebSocket: stream.py)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from fastapi import APIRouter, Response

from app.api.common import errors
from app.api.deps import DataPlaneDep, JsonBody
from app.api.v1 import codec
from app.api.v1.schemas import (
    SessionCreate,
    SessionPublic,
    SessionState,
    StepRequest,
    StepResponse,
    request_body,
)
from app.api.wire import NumpyJSONResponse
from app.dataplane import DataPlane, StepResult
from app.errors import SessionNotFound
from app.inference.engine import Engine
from app.sessions.base import Session, iso

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

# The form of the ids this API hands out (app.sessions.base.new_session_id: 122 random bits).
_SESSION_ID = re.compile(r"[0-9a-f]{32}")


def own(session_id: str) -> str:
    """`session_id` if it is a /v1 session id, else 404.

    KServe v2 sequences live in the same store (under `v2:<model>:<version>:...`, ids their
    clients choose); they belong to their protocol and are never addressable through /v1.
    """
    if _SESSION_ID.fullmatch(session_id) is None:
        raise SessionNotFound(f"unknown or expired session {session_id[:80]!r}")
    return session_id


def session_body(s: Session) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "model": s.model,
        "version": s.version,
        "offset": s.offset,
        "created_at": iso(s.created_at),
        "expires_at": iso(s.expires_at),
        "ttl_seconds": s.ttl_seconds,
    }


async def apply_steps(dp: DataPlane, session_id: str, body: Any) -> dict[str, Any]:
    """One chunk, from a parsed JSON body to the response body (HTTP, fast path and WS).

    The chunk is checked against the session's model inside its one store access.
    """
    req = StepRequest.model_validate(body)
    max_steps = dp.settings.max_steps

    def parse(engine: Engine) -> np.ndarray:
        return codec.sequence(req.inputs, engine.input_size, "inputs", max_steps)

    r: StepResult = await dp.step_parsed(own(session_id), parse, req.offset, req.return_internals)
    out: dict[str, Any] = {
        "session_id": session_id,
        "offset": r.session.offset,
        "outputs": r.outputs,
    }
    if r.internals is not None:
        out["internals"] = r.internals
    return out


@router.post(
    "",
    status_code=201,
    response_model=None,
    responses={201: {"model": SessionPublic}, **errors(404, 413, 422, 429, 503)},
    openapi_extra=request_body(SessionCreate),
)
async def create_session(body: JsonBody, dp: DataPlaneDep) -> NumpyJSONResponse:
    """Open a session pinned to a model version (newest by default).

    `state` (and optionally `offset`) restores a session exported by `GET .../state`.
    """
    req = SessionCreate.model_validate(body)
    engine = dp.model(req.model, req.version)
    state = codec.state(req.state, engine.state_specs, "state") if req.state is not None else None
    s = await dp.create_session(engine.name, engine.version, state, req.offset, req.ttl_seconds)
    return NumpyJSONResponse(session_body(s), status_code=201)


@router.post(
    "/{session_id}/steps",
    response_model=None,
    responses={200: {"model": StepResponse}, **errors(404, 409, 413, 422, 503)},
    openapi_extra=request_body(StepRequest),
)
async def steps(session_id: str, body: JsonBody, dp: DataPlaneDep) -> NumpyJSONResponse:
    """Feed one or more steps. With `offset`: applied when it is the current offset; a retry
    of the last chunk (its offset and the same inputs) returns the same outputs without
    applying them again; anything else is 409 with the current offset."""
    return NumpyJSONResponse(await apply_steps(dp, session_id, body))


@router.get(
    "/{session_id}",
    response_model=None,
    responses={200: {"model": SessionPublic}, **errors(404, 503)},
)
async def get_session(session_id: str, dp: DataPlaneDep) -> NumpyJSONResponse:
    """The session's fields with its current offset and expiry (extends its life)."""
    return NumpyJSONResponse(session_body(await dp.get_session(own(session_id))))


@router.get(
    "/{session_id}/state",
    response_model=None,
    responses={200: {"model": SessionState}, **errors(404, 503)},
)
async def get_state(session_id: str, dp: DataPlaneDep) -> NumpyJSONResponse:
    """Export the state; `POST /v1/sessions` with it (and `offset`) restores the session."""
    s = await dp.get_session(own(session_id))
    body = {"session_id": s.session_id, "model": s.model, "version": s.version}
    return NumpyJSONResponse({**body, "offset": s.offset, "state": s.state})


@router.post(
    "/{session_id}/reset",
    response_model=None,
    responses={200: {"model": SessionPublic}, **errors(404, 503)},
)
async def reset(session_id: str, dp: DataPlaneDep) -> NumpyJSONResponse:
    """Back to offset 0 and the initial state."""
    return NumpyJSONResponse(session_body(await dp.reset_session(own(session_id))))


@router.delete("/{session_id}", status_code=204, responses=errors(404, 503))
async def delete(session_id: str, dp: DataPlaneDep) -> Response:
    """End the session now."""
    await dp.delete_session(own(session_id))
    return Response(status_code=204)
