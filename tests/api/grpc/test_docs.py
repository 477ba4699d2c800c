"""The streaming example of docs/GRPC.md runs as written (only its address is pointed at a
live server with the shipped mackey-glass model) and prints the output the page shows."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest

from tests.live import ROOT, LiveServer, free_port, make_settings

DOC = ROOT / "docs" / "GRPC.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), re.S)


def test_streaming_example_runs_as_documented(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "models" / "mackey-glass", tmp_path / "mackey-glass")
    code = blocks("python")[0]
    assert '"localhost:8001"' in code
    with LiveServer(make_settings(tmp_path, grpc_port=free_port())) as s:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code.replace("localhost:8001", str(s.grpc_target)), str(DOC), "exec"), {})
    shown = re.search(r"Its output.*?```\n(.*?)```", DOC.read_text(), re.S)
    if shown is None:
        pytest.fail("docs/GRPC.md shows no output for its example")
    assert out.getvalue() == shown.group(1)
