"""The one place that assembles the per-resource routers."""

from __future__ import annotations

from fastapi import APIRouter

from app.api import health, metrics, ui
from app.api.v1 import models, predict, repository, sessions, stream
from app.api.v2 import repository as v2_repository
from app.api.v2 import router as v2

api_router = APIRouter()
for module in (health, models, predict, sessions, stream, repository, metrics, v2, v2_repository,
               ui):  # fmt: skip
    api_router.include_router(module.router)
