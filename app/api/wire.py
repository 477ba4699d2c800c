"""orjson in and out: request bodies parsed once, responses (numpy arrays included) written once.

Shared by every JSON protocol and by the fast path, so that a body means the same thing
whichever layer reads it. A large body (SPLIT_BYTES and more) has its large number arrays
read straight into float32 (app/api/numbers.py) and is parsed off the event loop, so that
health checks and small requests are answered meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse

from app.api.numbers import split_numbers, substitute
from app.errors import InvalidInput, PayloadTooLarge

SPLIT_BYTES = 256 * 1024
BODY_KEY = "peephole.body"  # where the edge's body reader leaves the body for the route
# Upper bound of the JSON text of one float32 (`-1.2345678e-38` and its comma).
NUMBER_TEXT_BYTES = 16


class NotJSON(ValueError):
    """The text is not valid JSON; the message says why (and where, when it can)."""


def loads(body: bytes | bytearray | memoryview | str, split_from: int | None = None) -> Any:
    """orjson.loads, with large number arrays as NumberArray; NotJSON when invalid.

    When arrays were taken out, an error's position would be that of the shortened text,
    so it is left out of the message."""
    threshold = SPLIT_BYTES if split_from is None else split_from
    split = None
    if len(body) >= threshold:
        split = split_numbers(body.encode() if isinstance(body, str) else body)
    try:
        if split is None:
            return orjson.loads(body)
        doc = orjson.loads(split.skeleton)
    except orjson.JSONDecodeError as e:
        raise NotJSON(str(e) if split is None else e.msg) from None
    return substitute(doc, split.arrays)


def decode_json(body: bytes | bytearray | memoryview | str, split_from: int | None = None) -> Any:
    """Parse a request body; any syntax error, NaN or infinity is a 422."""
    if not body:
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        return loads(body, split_from)
    except NotJSON as e:
        raise InvalidInput(f"the body is not valid JSON (NaN and infinity are refused): {e}") from e


async def parse_json(body: bytes | bytearray | memoryview | str) -> Any:
    """`decode_json`, in a worker thread when the body is large (numpy and orjson's chunks
    leave the event loop time to answer other requests)."""
    if len(body) < SPLIT_BYTES:
        return decode_json(body)
    return await asyncio.to_thread(decode_json, body)


async def request_body(request: Request) -> bytes | bytearray:
    """The body the edge read (whole, bounded, no copy), else read it now."""
    body: bytes | bytearray | None = request.scope.get(BODY_KEY)
    return body if body is not None else await request.body()


def json_size(numbers: int, lists: int) -> int:
    """An upper bound of the JSON text of `numbers` float32 values in `lists` lists."""
    return NUMBER_TEXT_BYTES * numbers + 3 * lists


def check_response_size(estimate: int, limit: int) -> None:
    """413 before any work when the answer could be larger than PEEPHOLE_MAX_RESPONSE_BYTES."""
    if estimate > limit:
        raise PayloadTooLarge(
            f"the answer would take up to {estimate} bytes; the limit is {limit} "
            "(PEEPHOLE_MAX_RESPONSE_BYTES): ask for fewer sequences or steps, the last step "
            "only, or no internals"
        )


class NumpyJSONResponse(JSONResponse):
    """JSON via orjson, numpy arrays included (float32 printed at float32 precision)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
