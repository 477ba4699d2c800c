"""GET /v1/models and the public model cards."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.common import errors
from app.api.deps import DataPlaneDep
from app.api.v1.schemas import ModelList, ModelPublic
from app.api.wire import NumpyJSONResponse
from app.inference.engine import Engine

router = APIRouter(prefix="/v1/models", tags=["models"])


def card_body(engine: Engine) -> dict[str, Any]:
    return {**engine.card.public(), "version": engine.version, "provider": engine.provider}


@router.get("", response_model=None, responses={200: {"model": ModelList}, **errors()})
async def list_models(dp: DataPlaneDep) -> NumpyJSONResponse:
    """Every served model with its versions; the highest version is the default."""
    return NumpyJSONResponse({"models": dp.models()})


@router.get("/{name}", response_model=None, responses={200: {"model": ModelPublic}, **errors(404)})
async def get_model(name: str, dp: DataPlaneDep) -> NumpyJSONResponse:
    """The default (newest) version's public card, with the execution provider in use."""
    return NumpyJSONResponse(card_body(dp.model(name)))


@router.get(
    "/{name}/versions/{version}",
    response_model=None,
    responses={200: {"model": ModelPublic}, **errors(404)},
)
async def get_model_version(name: str, version: str, dp: DataPlaneDep) -> NumpyJSONResponse:
    """One version's public card (`version` is a positive integer; anything else is 404)."""
    return NumpyJSONResponse(card_body(dp.model(name, version)))
