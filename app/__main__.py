"""`python -m app`: serve the model repository with uvicorn (uvloop/httptools if present)."""

from __future__ import annotations

import importlib.util
import logging

import uvicorn

from app.config import Settings
from app.main import create_app


def main() -> None:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    have = importlib.util.find_spec
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop" if have("uvloop") else "asyncio",
        http="httptools" if have("httptools") else "h11",
        ws_max_size=settings.max_body_bytes,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds or None,
        log_level=settings.log_level,
        server_header=False,
    )


if __name__ == "__main__":
    main()
