"""`python -m app`: serve the model repository with uvicorn (uvloop/httptools if present).

HTTP/1.1 is uvicorn's httptools protocol with one write per response (app/edge/transport.py).
PEEPHOLE_WORKERS (0 = one per two cores) worker processes. With more than one, uvicorn runs in
multi-process mode with the app factory `app.__main__:factory`, and sessions must be shared
by every worker: the `memory` store then becomes the shared table of app/sessions/shared.py
(in a directory this process creates and removes), `redis` stays Redis. Workers exit when
this supervisor dies, even by SIGKILL, so no orphan keeps serving the port.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app

log = logging.getLogger("peephole")
_SUPERVISOR = "PEEPHOLE_SUPERVISOR_PID"


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _die_with_supervisor() -> None:
    """Linux: SIGTERM this worker when the supervisor goes (prctl PR_SET_PDEATHSIG)."""
    parent = os.environ.get(_SUPERVISOR)
    if not parent or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _http_protocol() -> type:
    from app.edge.transport import CoalescingHttpToolsProtocol

    return CoalescingHttpToolsProtocol


def _ws_protocol() -> type:
    from app.edge.websocket import GracefulWebSocketProtocol

    return GracefulWebSocketProtocol


def factory() -> FastAPI:
    """The app of one worker process (uvicorn multi-process mode)."""
    settings = Settings()
    _logging(settings)
    _die_with_supervisor()
    if settings.session_store == "memory" and not os.environ.get(_SUPERVISOR):
        # Started by another process manager (uvicorn --workers N, gunicorn): this process
        # cannot know whether it has siblings, so it says what per-process sessions mean.
        log.warning(
            "sessions are kept in this process only; with several workers use "
            "PEEPHOLE_SESSION_STORE=shared (and one PEEPHOLE_SHARED_STORE_DIR) or redis"
        )
    return create_app(settings)


def main() -> None:
    settings = Settings()
    _logging(settings)
    have = importlib.util.find_spec
    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        loop="uvloop" if have("uvloop") else "asyncio",
        http=_http_protocol() if have("httptools") else "h11",
        ws=_ws_protocol(),
        ws_max_size=settings.max_body_bytes,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds or None,
        log_level=settings.log_level,
        access_log=settings.access_log,
        server_header=False,
    )
    workers = settings.worker_processes
    if workers == 1:
        uvicorn.run(create_app(settings), **options)
        return
    shared: Path | None = None
    if settings.session_store in ("memory", "shared") and settings.shared_store_dir is None:
        from app.sessions.shared import shared_dir, table_bytes

        shared = shared_dir(table_bytes(settings.max_sessions, 256, 64))
        os.environ["PEEPHOLE_SHARED_STORE_DIR"] = str(shared)
        log.info("%d workers: sessions live in the shared table under %s", workers, shared)
    os.environ[_SUPERVISOR] = str(os.getpid())
    try:
        uvicorn.run("app.__main__:factory", factory=True, workers=workers, **options)
    finally:
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)


if __name__ == "__main__":
    main()
