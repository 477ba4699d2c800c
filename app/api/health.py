"""Liveness and readiness (open even when API keys are set)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import DataPlaneDep
from app.api.schemas import ErrorBody, Health
from app.api.wire import NumpyJSONResponse

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=Health)
async def live() -> dict[str, str]:
    """200 while the process runs."""
    return {"status": "live"}


@router.get(
    "/ready",
    response_model=None,
    responses={200: {"model": Health}, 503: {"model": ErrorBody, "description": "Not ready"}},
)
async def ready(dp: DataPlaneDep) -> NumpyJSONResponse:
    """200 when every accepted model is loaded and the session store answers, else 503."""
    ok, why = await dp.ready()
    if ok:
        return NumpyJSONResponse({"status": "ready", "models": len(dp.registry), "detail": why})
    return NumpyJSONResponse({"detail": why}, status_code=503)
