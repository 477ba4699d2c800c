"""`grpc.health.v1.Health` reflecting readiness, for Kubernetes gRPC probes and load balancers.

The server ("") and `inference.GRPCInferenceService` are SERVING exactly when /health/ready
answers 200 (every accepted model loaded, the session store answering). `Check` asks the data
plane at once; `Watch` streams are fed by a refresh every `interval` seconds. From the start of
a graceful shutdown both stay NOT_SERVING, so that balancers drain this replica first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from app.dataplane import DataPlane

log = logging.getLogger("peephole.grpc")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ReadinessHealth(health_aio.HealthServicer):
    """The standard asyncio health servicer, its statuses taken from `DataPlane.ready`."""

    def __init__(self, dp: DataPlane, services: tuple[str, ...], interval: float = 2.0) -> None:
        super().__init__()
        self.dp = dp
        self.services = ("", *services)
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        ok, _ = await self.dp.ready()
        for service in self.services:
            await self.set(service, SERVING if ok else NOT_SERVING)

    async def Check(self, request: Any, context: Any) -> Any:
        if request.service in self.services:
            await self.refresh()
        return await super().Check(request, context)

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever(), name="grpc-health")

    async def stop(self) -> None:
        await self.enter_graceful_shutdown()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _refresh_forever(self) -> None:
        """Keeps `Watch` streams current (Check asks the data plane itself)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:  # never let the refresher die
                log.exception("health refresh failed")
