"""orjson in and out: request bodies parsed once, responses (numpy arrays included) written once.

Shared by every JSON protocol and by the fast path, so that a body means the same thing
whichever layer reads it.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

from app.errors import InvalidInput


def decode_json(body: bytes | str) -> Any:
    """Parse a request body; any syntax error, NaN or infinity is a 422."""
    if not body:
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"the body is not valid JSON (NaN and infinity are refused): {e}") from e


class NumpyJSONResponse(JSONResponse):
    """JSON via orjson, numpy arrays included (float32 printed at float32 precision)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
