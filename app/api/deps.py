"""Named dependencies: routes declare what they need, read from app.state (built in lifespan)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from app.api.wire import parse_json, request_body
from app.config import Settings
from app.dataplane import DataPlane
from app.inference.control import ModelControl
from app.metrics import Metrics


def get_dataplane(conn: HTTPConnection) -> DataPlane:
    return conn.app.state.dataplane  # type: ignore[no-any-return]


def get_control(conn: HTTPConnection) -> ModelControl:
    return conn.app.state.control  # type: ignore[no-any-return]


def get_settings(conn: HTTPConnection) -> Settings:
    return conn.app.state.settings  # type: ignore[no-any-return]


def get_metrics(conn: HTTPConnection) -> Metrics:
    return conn.app.state.metrics  # type: ignore[no-any-return]


async def json_body(request: Request) -> Any:
    """The body (read whole and bounded by the body middleware), parsed as JSON."""
    return await parse_json(await request_body(request))


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
ControlDep = Annotated[ModelControl, Depends(get_control)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
JsonBody = Annotated[Any, Depends(json_body)]
