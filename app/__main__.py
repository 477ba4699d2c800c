"""`python -m app` / `peephole-serve`: serve the model repository with uvicorn.

Settings come from flags, then PEEPHOLE_* environment variables, then a `.env` file, then
defaults (a flag is written into the environment, so worker processes see it too). A bad value
is one line on stderr and exit status 2. The start-up log says, one line each, the workers,
the session store and where, whether API keys are on, the provider and the models served or
refused.

HTTP/1.1 is uvicorn's httptools protocol with one write per response (app/edge/transport.py).
With several workers uvicorn runs in multi-process mode with the app factory
`app.__main__:factory`; sessions must then be in a store every worker shares (lmdb or redis:
the memory store is refused), and an lmdb store without a path gets a private directory that
this process creates and removes. Workers exit when this supervisor dies, even by SIGKILL.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

try:
    from pydantic import ValidationError

    from app.config import Settings
    from app.sessions import describe_store
except ModuleNotFoundError as e:  # the client-only install (`pip install peephole`)
    if (e.name or "").partition(".")[0] == "app":
        raise
    sys.exit(f"python -m app: {e.name} is missing; the server needs pip install 'peephole[serve]'")

if TYPE_CHECKING:
    from fastapi import FastAPI

# uvicorn and the app are imported when serving starts, so that --help and a bad flag answer
# at once.

log = logging.getLogger("peephole")
_SUPERVISOR = "PEEPHOLE_SUPERVISOR_PID"

# flag -> (environment variable, help); types and choices are added in `parser()`.
FLAGS: dict[str, tuple[str, str]] = {
    "--host": ("PEEPHOLE_HOST", "address to listen on (default 127.0.0.1)"),
    "--port": ("PEEPHOLE_PORT", "port to listen on (default 8000)"),
    "--grpc-port": ("PEEPHOLE_GRPC_PORT", "gRPC port (default 8001; 0 turns gRPC off)"),
    "--model-repository": ("PEEPHOLE_MODEL_REPOSITORY", "the model repository (default ./models)"),
    "--workers": (
        "PEEPHOLE_WORKERS",
        "worker processes (default 1, measured best on 2 cores; 0 = one per two cores); "
        "more than one needs --session-store lmdb or redis",
    ),
    "--session-store": (
        "PEEPHOLE_SESSION_STORE",
        "memory: this process only (default); lmdb: shared by the processes of this host; "
        "redis: shared by replicas (PEEPHOLE_REDIS_URL)",
    ),
    "--lmdb-path": (
        "PEEPHOLE_LMDB_PATH",
        "directory of the lmdb store (default: a private one for this run, removed at exit)",
    ),
    "--provider": ("PEEPHOLE_PROVIDER", "auto (CUDA if usable, else CPU; default), cpu, cuda"),
    "--log-level": ("PEEPHOLE_LOG_LEVEL", "critical, error, warning, info (default), debug"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not the usage block: `peephole-serve: error: ...`, exit status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _directory(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is not a directory")
    return path


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError
    return port


def _count(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError
    return n


def parser() -> argparse.ArgumentParser:
    prog = "python -m app" if Path(sys.argv[0]).name == "__main__.py" else "peephole-serve"
    p = _Parser(
        prog=prog,
        description="Serve the peephole LSTM models of a model repository over HTTP "
        "(REST /v1, KServe v2 /v2, WebSocket streams, /ui) and gRPC (KServe v2 / Triton).",
        epilog="Precedence: flags, then PEEPHOLE_* environment variables, then a .env file in "
        "the working directory, then defaults. Every other setting is an environment variable "
        "only (README, Configuration).",
    )
    _port.__name__ = "port"  # argparse names the type in its message: "invalid port value"
    _count.__name__ = "count"
    types: dict[str, dict[str, Any]] = {
        "--port": {"type": _port, "metavar": "PORT"},
        "--grpc-port": {"type": _port, "metavar": "PORT"},
        "--model-repository": {"type": _directory, "metavar": "DIR"},
        "--workers": {"type": _count, "metavar": "N"},
        "--session-store": {"choices": ["memory", "lmdb", "redis"]},
        "--lmdb-path": {"type": Path, "metavar": "DIR"},
        "--provider": {"choices": ["auto", "cpu", "cuda"]},
        "--log-level": {"choices": ["critical", "error", "warning", "info", "debug"]},
    }
    for flag, (env, text) in FLAGS.items():
        p.add_argument(flag, help=f"{text} [{env}]", **types.get(flag, {}))
    return p


def settings_from(argv: Sequence[str] | None = None) -> Settings:
    """Flags over the environment; any bad value exits with one line and status 2."""
    p = parser()
    args = p.parse_args(argv)
    for flag, (env, _) in FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            os.environ[env] = str(value)
    try:
        return Settings()
    except ValidationError as e:
        first = e.errors()[0]
        where = "PEEPHOLE_" + "_".join(str(x) for x in first["loc"]).upper()
        msg = str(first["msg"]).removeprefix("Value error, ")
        p.exit(2, f"{p.prog}: error: {where + ': ' if first['loc'] else ''}{msg}\n")


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def log_startup(settings: Settings, private_store: bool = False) -> None:
    """The supervisor's start-up lines (each worker adds provider and models: app/main.py)."""
    log.info("workers: %d", settings.worker_processes)
    private = "; a private directory, removed at exit" if private_store else ""
    log.info("session store: %s%s", describe_store(settings), private)
    if settings.api_keys:
        n = len(settings.api_keys)
        log.info("auth: on (%d API key%s; health, /ui and the docs stay open)", n, "s" * (n > 1))
    else:
        log.info("auth: off (PEEPHOLE_API_KEYS is empty: anyone who can connect may call)")


def _shared_metrics() -> Path | None:
    """Workers' metrics added up in /metrics (app/metrics.py): a private directory for
    prometheus-client's multiprocess files, unless PROMETHEUS_MULTIPROC_DIR names one (then
    it is the operator's, and kept). Returns the private directory, to be removed at exit."""
    from app.metrics import SHARED_DIR_ENV

    if os.environ.get(SHARED_DIR_ENV):
        log.info("metrics: every worker's, added up (%s=%s)", SHARED_DIR_ENV,
                 os.environ[SHARED_DIR_ENV])  # fmt: skip
        return None
    path = Path(tempfile.mkdtemp(prefix="peephole-metrics-"))
    os.environ[SHARED_DIR_ENV] = str(path)
    log.info("metrics: every worker's, added up (files in %s, removed at exit)", path)
    return path


def _settle_gc() -> None:
    """Fewer and cheaper garbage collections in a serving process (docs/PERFORMANCE.md).

    A JSON body of 1000 time steps is 1000 lists: at the default threshold (700 new container
    objects) every such request runs a collection, objects alive across it are promoted, and
    in time a full collection walks the whole heap (milliseconds: seen as p99). The objects
    that exist once the app is built (modules, routes, schemas) are moved out of the
    collector's sight, and the youngest generation is collected every 20,000 allocations.
    Reference cycles are still collected, a little later.
    """
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


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


def factory() -> FastAPI:
    """The app of one worker process (uvicorn multi-process mode, or another manager's)."""
    from app.main import create_app

    settings = Settings()
    _logging(settings)
    _die_with_supervisor()
    if not os.environ.get(_SUPERVISOR):
        # Started by another process manager (uvicorn --workers N, gunicorn): this process
        # cannot know whether it has siblings.
        if settings.session_store == "lmdb" and settings.lmdb_path is None:
            raise RuntimeError(
                "PEEPHOLE_SESSION_STORE=lmdb needs PEEPHOLE_LMDB_PATH when the workers are "
                "not started by `python -m app` (each would open a private store)"
            )
        if settings.session_store == "memory":
            log.warning(
                "sessions are kept in this process only; with several workers use "
                "PEEPHOLE_SESSION_STORE=lmdb (with one PEEPHOLE_LMDB_PATH) or redis"
            )
    app = create_app(settings)
    _settle_gc()
    return app


def main(argv: Sequence[str] | None = None) -> None:
    settings = settings_from(argv)
    import uvicorn

    from app.edge.server import server_options
    from app.main import create_app

    _logging(settings)
    private: Path | None = None
    if settings.session_store == "lmdb" and settings.lmdb_path is None:
        from app.sessions.lmdb import private_dir

        private = private_dir()
        os.environ["PEEPHOLE_LMDB_PATH"] = str(private)
        settings = Settings()
    log_startup(settings, private is not None)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        **server_options(settings),
    }
    workers = settings.worker_processes
    metrics_dir: Path | None = None
    try:
        if workers == 1:
            app = create_app(settings)
            _settle_gc()
            uvicorn.run(app, **options)
        else:
            os.environ[_SUPERVISOR] = str(os.getpid())
            os.environ["PEEPHOLE_GRPC_REUSE_PORT"] = "true"  # every worker serves gRPC too
            metrics_dir = _shared_metrics()
            uvicorn.run("app.__main__:factory", factory=True, workers=workers, **options)
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
