"""GET /metrics: Prometheus text exposition."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Response

from app.api.common import errors
from app.api.deps import DataPlaneDep, MetricsDep
from app.errors import StoreUnavailable

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"},
        **errors(),
    },
)
async def metrics(m: MetricsDep, dp: DataPlaneDep) -> Response:
    """Request counts and latency by route and status, inference time and batch sizes,
    live sessions, session store errors."""
    # A store failure is counted in peephole_session_store_errors_total; the rest renders.
    with contextlib.suppress(StoreUnavailable):
        m.live_sessions.set(await dp.live_sessions())
    return Response(m.render(), media_type=m.content_type)
