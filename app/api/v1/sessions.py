"""Streaming sessions: create, steps, inspect, export, reset, delete (the WebSocket: stream.py)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from app.api.common import errors
from app.api.deps import DataPlaneDep, JsonBody
from app.api.v1 import codec
from app.api.v1.schemas import (
    MigrateRequest,
    SessionCreate,
    SessionPublic,
    SessionState,
    StepRequest,
    StepResponse,
    request_body,
)
from app.api.wire import NumpyJSONResponse, check_response_size
from app.dataplane import MAX_OFFSET, DataPlane, SessionExists, StepResult
from app.errors import InvalidInput, SessionNotFound
from app.inference.engine import Engine
from app.sessions.base import Session, iso

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

# The form of the ids this API hands out (app.sessions.base.new_session_id: 122 random bits).
_SESSION_ID = re.compile(r"[0-9a-f]{32}")


def own(session_id: str) -> str:
    """`session_id` if it is a /v1 session id, else 404.

    KServe v2 sequences live in the same store (under `v2:<model>:<version or ->:...`, ids their
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


_STEP_FIELDS = frozenset(StepRequest.model_fields)


def step_fields(body: Any) -> tuple[Any, int | None, bool]:
    """(inputs, offset, return_internals) of a step body, as `StepRequest` validates it.

    The usual body (an object of those members, a non-negative int offset or none, a bool)
    is checked here: pydantic's validation costs more than the rest of a step's parsing.
    Anything else goes to `StepRequest`, which accepts it the same way or words the error.
    """
    if type(body) is dict and "inputs" in body and body.keys() <= _STEP_FIELDS:
        offset = body.get("offset")
        internals = body.get("return_internals", False)
        if type(internals) is bool and (
            offset is None or (type(offset) is int and 0 <= offset <= MAX_OFFSET)
        ):
            return body["inputs"], offset, internals
    req = StepRequest.model_validate(body)
    return req.inputs, req.offset, req.return_internals


async def apply_steps(dp: DataPlane, session_id: str, body: Any) -> dict[str, Any]:
    """One chunk, from a parsed JSON body to the response body (HTTP, fast path and WS).

    The chunk is checked against the session's model inside its one store access.
    """
    inputs, offset, internals = step_fields(body)
    s = dp.settings

    def parse(engine: Engine) -> np.ndarray:
        x = codec.sequence(inputs, engine.input_size, "inputs", s.max_steps)
        size = codec.answer_size(engine, 1, len(x), internals=internals)
        check_response_size(size, s.max_response_bytes)
        return x

    r: StepResult = await dp.step_parsed(own(session_id), parse, offset, internals)
    out: dict[str, Any] = {
        "session_id": session_id,
        "offset": r.session.offset,
        "outputs": r.outputs,
    }
    if r.internals is not None:
        out["internals"] = r.internals
    return out


IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces


def idempotent_id(request: Request) -> str | None:
    """The session id an `Idempotency-Key` stands for, or None without the header.

    The id is derived from the key (and the caller's bearer key, so tenants never meet), so
    every replica finds the session a first attempt created without any extra record: a
    retried create returns that session instead of opening a second one.
    """
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if _IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise InvalidInput(f"{IDEMPOTENCY_HEADER} must be 1 to 255 printable ASCII characters")
    tenant = request.headers.get("authorization", "")
    digest = hashlib.sha256(f"peephole-idempotency\0{tenant}\0{key}".encode()).hexdigest()
    return digest[:32]


@router.post(
    "",
    status_code=201,
    response_model=None,
    responses={201: {"model": SessionPublic}, **errors(404, 413, 422, 429, 503)},
    openapi_extra={
        **request_body(SessionCreate),
        "parameters": [
            {
                "name": IDEMPOTENCY_HEADER,
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "A client-chosen key (e.g. a UUID) reused on retries of this "
                "create: a retry returns the session the first attempt made (as it stands "
                "now, with `Idempotent-Replayed: true`) for as long as that session lives.",
            }
        ],
    },
)
async def create_session(body: JsonBody, request: Request, dp: DataPlaneDep) -> NumpyJSONResponse:
    """Open a session pinned to a model version (newest by default).

    `state` (and optionally `offset`) restores a session exported by `GET .../state`.
    """
    req = SessionCreate.model_validate(body)
    engine = dp.model(req.model, req.version)
    state = codec.state(req.state, engine.state_specs, "state") if req.state is not None else None
    sid = idempotent_id(request)
    try:  # (with a key: created only if absent, atomically, so racing retries make one)
        s = await dp.create_session(
            engine.name, engine.version, state, req.offset, req.ttl_seconds,
            session_id=sid, if_absent=sid is not None,
        )  # fmt: skip
    except SessionExists as e:
        s = e.session
    else:
        return NumpyJSONResponse(session_body(s), status_code=201)
    asked = (req.model, req.version or s.version, req.ttl_seconds or s.ttl_seconds)
    if asked != (s.model, s.version, s.ttl_seconds):
        raise InvalidInput(
            f"this {IDEMPOTENCY_HEADER} opened a session on {s.model}/{s.version} "
            f"(ttl {s.ttl_seconds} s); a retry must ask for the same"
        )
    replayed = {"Idempotent-Replayed": "true"}
    return NumpyJSONResponse(session_body(s), status_code=201, headers=replayed)


@router.post(
    "/{session_id}/steps",
    response_model=None,
    responses={200: {"model": StepResponse}, **errors(404, 409, 410, 413, 422, 503)},
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
    responses={200: {"model": SessionPublic}, **errors(404, 410, 503)},
)
async def reset(session_id: str, dp: DataPlaneDep) -> NumpyJSONResponse:
    """Back to offset 0 and the initial state."""
    return NumpyJSONResponse(session_body(await dp.reset_session(own(session_id))))


@router.post(
    "/{session_id}/migrate",
    response_model=None,
    responses={200: {"model": SessionPublic}, **errors(404, 409, 422, 503)},
    openapi_extra=request_body(MigrateRequest),
)
async def migrate(session_id: str, body: JsonBody, dp: DataPlaneDep) -> NumpyJSONResponse:
    """Pin the session to another ready version of its model, keeping its state and offset
    (a rolling model update carries live streams over). 409 when the versions' state layouts
    differ, 404 when the version is not served; a session whose version is gone (410) may
    still move."""
    req = MigrateRequest.model_validate(body)
    return NumpyJSONResponse(session_body(await dp.migrate_session(own(session_id), req.version)))


@router.delete("/{session_id}", status_code=204, responses=errors(404, 503))
async def delete(session_id: str, dp: DataPlaneDep) -> Response:
    """End the session now."""
    await dp.delete_session(own(session_id))
    return Response(status_code=204)
