"""POST /v1/models/{name}[/versions/{v}]/predict: whole sequences, ragged batches exact."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.common import errors
from app.api.deps import DataPlaneDep, JsonBody
from app.api.v1 import codec
from app.api.v1.schemas import PredictRequest, PredictResponse, request_body
from app.api.wire import NumpyJSONResponse, check_response_size
from app.dataplane import DataPlane

router = APIRouter(prefix="/v1/models", tags=["predict"])

_DOC: dict[str, Any] = {
    "response_model": None,
    "responses": {200: {"model": PredictResponse}, **errors(404, 413, 422)},
    "openapi_extra": request_body(PredictRequest),
}


async def predict_body(dp: DataPlane, name: str, version: str | None, body: Any) -> dict[str, Any]:
    engine = dp.model(name, version)
    req = PredictRequest.model_validate(body)
    s = dp.settings
    x, lengths = codec.ragged_batch(req.inputs, engine.input_size, s.max_batch_size, s.max_steps)
    size = codec.answer_size(
        engine,
        len(lengths),
        int(lengths.sum()),
        sequences_out=req.return_sequences,
        state=req.return_state,
        internals=req.return_internals,
    )
    check_response_size(size, s.max_response_bytes)
    states = codec.batch_states(req.state, engine.state_specs, len(lengths))
    r = await dp.predict(
        engine,
        x,
        lengths,
        states,
        return_sequences=req.return_sequences,
        return_state=req.return_state,
        internals=req.return_internals,
    )
    out: dict[str, Any] = {"model": engine.name, "version": engine.version, "outputs": r.outputs}
    if r.states is not None:
        out["state"] = r.states
    if r.internals is not None:
        out["internals"] = r.internals
    return out


@router.post("/{name}/predict", **_DOC)
async def predict(name: str, body: JsonBody, dp: DataPlaneDep) -> NumpyJSONResponse:
    """Run the default version on `inputs` [batch][time][input_size] (lengths may differ).

    Each sequence's outputs (and, with `return_state`, final state) are those of the
    sequence run alone; `state` starts each sequence from an exported state.
    """
    return NumpyJSONResponse(await predict_body(dp, name, None, body))


@router.post("/{name}/versions/{version}/predict", **_DOC)
async def predict_version(
    name: str, version: str, body: JsonBody, dp: DataPlaneDep
) -> NumpyJSONResponse:
    """As `/predict`, on one version."""
    return NumpyJSONResponse(await predict_body(dp, name, version, body))
