"""The one place that assembles the per-resource routers."""

from __future__ import annotations

from fastapi import APIRouter

from app.api import health, metrics, models, predict, sessions, ui, v2

api_router = APIRouter()
for module in (health, models, predict, sessions, metrics, v2, ui):
    api_router.include_router(module.router)
