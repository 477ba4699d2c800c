"""API keys (PEEPHOLE_API_KEYS): `Authorization: Bearer <key>` on every route but the open ones.

Checked before any body is read, so a request without a key learns only 401. Keys are
compared with `hmac.compare_digest` against every configured key (no early exit). A
WebSocket may pass `?access_token=<key>` because browsers cannot set its headers.
`check_key` is the rule; the middleware and the fast path both call it.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import Unauthorized, error_payload, error_response

OPEN_PREFIXES = ("/health/", "/v2/health/", "/docs/assets/")
OPEN_PATHS = frozenset({"/ui", "/ui/", "/docs", "/redoc", "/openapi.json"})


def is_open(path: str) -> bool:
    """Routes that never need a key: the four health routes, the /ui page itself, and the
    API docs (/docs, /redoc, their assets, /openapi.json), which hold no data."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def key_matches(token: str, keys: list[str]) -> bool:
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(token.encode(), key.encode())
    return ok


def parse_bearer(value: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` value (HTTP header or gRPC metadata)."""
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            return parse_bearer(value.decode("latin-1"))
    return None


def check_key(scope: Scope, keys: list[str]) -> None:
    """Raise Unauthorized unless the request may pass (no keys set, an open route, a key)."""
    if not keys or is_open(scope["path"]):
        return
    token = bearer(scope)
    if token is None and scope["type"] == "websocket":
        qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        token = (qs.get("access_token") or [None])[0]
    if token is None or not key_matches(token, keys):
        raise Unauthorized()


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = list(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            check_key(scope, self.keys)
        except Unauthorized as err:
            await self._refuse(err, scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(err: Unauthorized, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await error_response(scope["path"], err)(scope, receive, send)
            return
        # WebSocket: accept, say why in the stream's error form, close with 4401.
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": orjson.dumps(error_payload(err)).decode()})
        await send({"type": "websocket.close", "code": 4401})
