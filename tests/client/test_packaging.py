"""`pip install peephole` is the client alone: it imports only httpx, numpy and websockets,
and the server (`python -m app`) says which extra it needs when it is missing."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.client.conftest import KEY, MG
from tests.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DEPS = {"httpx", "numpy", "websockets"}
SERVER_MODULES = [
    "app", "training", "fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings",
    "onnxruntime", "onnx", "torch", "orjson", "redis", "prometheus_client", "lmdb", "grpc",
]  # fmt: skip


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env,
        timeout=120,
    )  # fmt: skip


def test_the_client_loads_none_of_the_servers_modules(server: LiveServer) -> None:
    code = f"""
import json, sys
import numpy as np
from peephole import Client
c = Client(sys.argv[1], {KEY!r})
c.models()
x = np.full((4, 1), 0.9)
y = c.predict({MG!r}, x)
with c.session({MG!r}) as s:
    s.step(x[:2])
    list(s.stream([x[2:]]))
    s.state()
loaded = sorted(m for m in {SERVER_MODULES!r} if any(k == m or k.startswith(m + ".") for k in sys.modules))
print(json.dumps(loaded))
"""
    r = _run(code, server.url)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_the_client_imports_only_its_dependencies() -> None:
    for path in sorted((ROOT / "peephole").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                allowed = top in sys.stdlib_module_names or top in CLIENT_DEPS | {"peephole"}
                assert allowed, f"{path.name} imports {name}"


def test_the_base_install_is_the_client_and_the_server_is_an_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {d.split(">")[0].split("[")[0].split("=")[0] for d in project["dependencies"]}
    assert base == CLIENT_DEPS
    serve = " ".join(project["optional-dependencies"]["serve"])
    for heavy in ("fastapi", "uvicorn", "onnxruntime", "pydantic-settings", "redis"):
        assert heavy in serve
    assert project["scripts"]["peephole"] == "peephole.cli:main"
    assert "peephole[serve]" in project["optional-dependencies"]["train"]


def test_python_m_app_without_the_serve_extra_says_what_to_install() -> None:
    serve = ["fastapi", "uvicorn", "pydantic", "pydantic_settings", "onnxruntime", "orjson",
             "prometheus_client", "redis", "lmdb"]  # fmt: skip
    code = (
        f"import sys, runpy; sys.modules.update(dict.fromkeys({serve!r})); "
        "runpy.run_module('app', run_name='__main__')"
    )  # a None in sys.modules makes that import fail, as in an install without the extra
    r = _run(code)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "pip install 'peephole[serve]'" in r.stderr
    assert "is missing" in r.stderr
