"""WS /v1/sessions/{id}/stream: steps over one WebSocket, answered as `/steps` answers them."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from app.api.deps import DataPlaneDep
from app.api.v1.sessions import apply_steps, own
from app.api.wire import parse_json
from app.edge.limits import LARGE_BODY, InFlight
from app.errors import NotFound, PayloadTooLarge, PeepholeError, as_peephole, error_payload

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


async def _send(ws: WebSocket, body: dict[str, Any]) -> None:
    await ws.send_text(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY).decode())


@router.websocket("/{session_id}/stream")
async def stream(ws: WebSocket, session_id: str, dp: DataPlaneDep) -> None:
    """Each text message `{"inputs", "offset"?}` gets the `/steps` body, or
    `{"detail", "status"}` (the socket stays open). An unknown session: 404, close 4404."""
    await ws.accept()
    try:
        await dp.get_session(own(session_id))
    except PeepholeError as e:
        await _send(ws, error_payload(e))
        await ws.close(4404 if isinstance(e, NotFound) else 1011)
        return
    limit = dp.settings.max_body_bytes
    metrics = getattr(ws.app.state, "metrics", None)
    inflight: InFlight | None = getattr(ws.app.state, "inflight", None)
    while True:
        try:
            message = await ws.receive()
        except WebSocketDisconnect:
            return
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        taken = 0  # a large message holds its size of InFlight until answered, as HTTP does
        try:
            if len(data) > limit:
                raise PayloadTooLarge(f"message over the limit of {limit} bytes")
            if inflight is not None and len(data) >= LARGE_BODY:
                inflight.take(len(data))
                taken = len(data)
            body = await apply_steps(dp, session_id, await parse_json(data))
            status = 200
        except Exception as exc:
            err = as_peephole(exc)
            if err is None:
                raise
            body, status = error_payload(err), err.status_code
        if metrics is not None:
            metrics.ws_messages.labels(status=str(status)).inc()
        try:
            await _send(ws, body)
        except WebSocketDisconnect:
            return
        finally:
            if inflight is not None:
                inflight.give(taken)
        if status == 404:
            await ws.close(4404)
            return
