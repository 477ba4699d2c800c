"""`python -m app` / `peephole-serve`: --help, flags over the environment, one-line errors with
exit status 2, and the start-up lines (workers, store, auth, provider, models)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from app.__main__ import FLAGS, log_startup
from app.config import Settings
from app.sessions import describe_store
from tests.app.server import App
from tests.live import free_port
from tests.repo import RepoModels

ROOT = Path(__file__).resolve().parents[2]


def serve(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m app ARGS` that is expected to exit by itself."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    for name in [k for k in full if k.startswith("PEEPHOLE_") and k not in env]:
        del full[name]  # the developer's own settings must not leak in
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_help_lists_every_flag_and_its_variable_and_serves_nothing() -> None:
    port = free_port()
    r = serve("--help", PEEPHOLE_PORT=str(port))
    assert r.returncode == 0 and r.stderr == ""
    for flag, (env, _) in FLAGS.items():
        assert flag in r.stdout and env in r.stdout
    assert "Precedence: flags, then PEEPHOLE_* environment variables" in r.stdout
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1)


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--port", "abc"], {}, "argument --port: invalid port value: 'abc'"),
        (["--port", "70000"], {}, "invalid port value: '70000'"),
        (["--workers", "-1"], {}, "argument --workers: invalid count value: '-1'"),
        (["--session-store", "shared"], {}, "invalid choice: 'shared'"),
        (["--log-level", "loud"], {}, "argument --log-level: invalid choice: 'loud'"),
        (["--model-repository", "/no/such/dir"], {}, "'/no/such/dir' is not a directory"),
        (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
        (["--port"], {}, "argument --port: expected one argument"),
        ([], {"PEEPHOLE_PORT": "abc"}, "PEEPHOLE_PORT: Input should be a valid integer"),
        ([], {"PEEPHOLE_SESSION_STORE": "shared"}, "PEEPHOLE_SESSION_STORE: Input should be"),
        (["--workers", "2"], {}, "2 workers with PEEPHOLE_SESSION_STORE=memory would each keep"),
        (["--workers", "3", "--session-store", "memory"], {"PEEPHOLE_SESSION_STORE": "lmdb"},
         "3 workers with PEEPHOLE_SESSION_STORE=memory"),  # the flag wins over the variable
    ],
)  # fmt: skip
def test_a_bad_value_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], says: str
) -> None:
    r = serve(*args, **env)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert says in r.stderr and r.stderr.startswith("python -m app: error: ")


def test_flags_win_over_the_environment_and_the_start_is_logged(models: RepoModels) -> None:
    """Environment says warning level and another port; the flags say info and this port. The
    start-up lines name workers, store, auth (never the keys), provider, models and refusals."""
    app = App(models.repo, "--log-level", "info", "--model-repository", str(models.repo),
              "--provider", "cpu", PEEPHOLE_PORT=str(free_port()), PEEPHOLE_LOG_LEVEL="warning",
              PEEPHOLE_PROVIDER="auto", PEEPHOLE_API_KEYS="k-secret-1,k-secret-2")  # fmt: skip
    out = app.stop()
    lines = [ln.split(": ", 1)[1] for ln in out.splitlines() if " peephole: " in ln]
    assert "workers: 1" in lines
    assert "session store: memory (in this process; sessions end with it)" in lines
    assert "auth: on (2 API keys; health, /ui and the docs stay open)" in lines
    assert "provider: CPUExecutionProvider (PEEPHOLE_PROVIDER=cpu)" in lines
    assert f"models served from {models.repo}: lnsc/1, plain/1, plain/2" in lines
    refused = next(ln for ln in lines if ln.startswith("models refused: "))
    for name in ("bad-card/1", "bad-graph/1", "bad-sha/1", "plain/3"):
        assert name + " (" in refused
    assert "k-secret" not in out


def test_start_lines_for_the_other_settings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="peephole"):
        log_startup(Settings(api_keys=[]))
        log_startup(Settings(session_store="lmdb", workers=2), private_store=True)
    text = caplog.text
    assert "auth: off (PEEPHOLE_API_KEYS is empty" in text
    assert "workers: 2" in text
    assert (
        "session store: lmdb at a private directory for this process (shared by 2 workers" in text
    )
    assert "a private directory, removed at exit" in text
    hidden = Settings(session_store="redis", redis_url="redis://user:pw@db.example:6380/2")
    assert describe_store(hidden) == (
        "redis at redis://user:***@db.example:6380/2 (key prefix 'peephole:')"
    )


def test_the_console_script_is_python_m_app() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["peephole-serve"].split(":")
    assert (module, func) == ("app.__main__", "main")
    code = "import sys; from app.__main__ import main; sys.argv[0] = 'peephole-serve'; main()"
    r = subprocess.run([sys.executable, "-c", code, "--help"], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith("usage: peephole-serve ")
    bad = subprocess.run([sys.executable, "-c", code, "--port", "x"], cwd=ROOT, text=True,
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=60)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("peephole-serve: error: ")


def test_workers_of_another_manager_need_one_lmdb_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """`uvicorn --workers N --factory app.__main__:factory`: each worker would otherwise open
    a private store of its own."""
    from app.__main__ import factory

    monkeypatch.delenv("PEEPHOLE_SUPERVISOR_PID", raising=False)
    monkeypatch.delenv("PEEPHOLE_LMDB_PATH", raising=False)
    monkeypatch.setenv("PEEPHOLE_SESSION_STORE", "lmdb")
    with pytest.raises(RuntimeError, match="needs PEEPHOLE_LMDB_PATH"):
        factory()


def test_a_serving_process_settles_the_garbage_collector() -> None:
    """The app a worker serves is built with the start-up objects frozen out of the collector
    and a high first threshold (a 1000-step JSON body must not trigger a collection)."""
    code = ("import gc; from app.__main__ import factory; factory(); "
            "print(gc.get_freeze_count(), gc.get_threshold()[0])")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEEPHOLE_")}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**env, "PYTHONPATH": str(ROOT)}, timeout=60)  # fmt: skip
    frozen, threshold = map(int, r.stdout.split())
    assert frozen > 10_000 and threshold == 20_000, r.stderr[-2000:]
