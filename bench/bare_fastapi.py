"""The floor for per-request framework cost: a bare FastAPI app, no inference, no sessions.

    uvicorn bench.bare_fastapi:app --workers N --loop uvloop --http httptools --no-access-log

It has Peephole's two hot routes and parses the same JSON bodies (orjson, into float32 numpy),
then answers a body of the same shape (the inputs echoed as outputs). bench/http.py runs it with
the same worker count and wrk cases as Peephole, to show what the framework alone costs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response

app = FastAPI()
_OPT = orjson.OPT_SERIALIZE_NUMPY


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body, option=_OPT), media_type="application/json")


@app.post("/v1/models/{name}/predict")
async def predict(name: str, request: Request) -> Response:
    inputs = orjson.loads(await request.body())["inputs"]
    x = [np.asarray(seq, np.float32) for seq in inputs]
    return _json({"model": name, "version": 1, "outputs": x})


@app.post("/v1/sessions/{session_id}/steps")
async def steps(session_id: str, request: Request) -> Response:
    x = np.asarray(orjson.loads(await request.body())["inputs"], np.float32)
    return _json({"session_id": session_id, "offset": 1, "outputs": x})


@app.get("/health/ready")
async def ready() -> dict[str, str]:
    return {"status": "ready"}
