"""How uvicorn serves the app: one set of options for `python -m app` and the tests.

The production transport is uvicorn's httptools protocol with our changes
(app/edge/transport.py: one write per response, the connection limits) on uvloop; without
httptools (a platform with no wheel) uvicorn's h11 protocol serves, with its own header
limit and keep-alive timeout only.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

from app.config import Settings


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config options for serving (all but host, port and workers)."""
    have = importlib.util.find_spec
    http: Any = "h11"
    if have("httptools"):
        from app.edge.transport import CoalescingHttpToolsProtocol, ConnectionLimits

        limits = ConnectionLimits.of(settings)
        http = functools.partial(CoalescingHttpToolsProtocol, limits=limits)
    from app.edge.websocket import GracefulWebSocketProtocol

    return {
        "loop": "uvloop" if have("uvloop") else "asyncio",
        "http": http,
        "ws": GracefulWebSocketProtocol,
        "ws_max_size": settings.max_body_bytes,
        "timeout_keep_alive": settings.keepalive_seconds,
        "h11_max_incomplete_event_size": settings.max_header_bytes,  # the h11 fallback's 431
        "timeout_graceful_shutdown": settings.graceful_shutdown_seconds or None,
        "log_level": settings.log_level,
        "access_log": settings.access_log,
        "server_header": False,
    }
