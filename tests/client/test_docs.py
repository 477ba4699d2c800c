"""The client code users copy first (README's quick start, docs/CLIENT.md's examples) runs
as written against a real server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live import LiveServer, make_settings

ROOT = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def open_server(repo: Path) -> Iterator[LiveServer]:
    with LiveServer(make_settings(repo)) as s:  # no API keys, as a first try has
        yield s


def python_blocks(path: Path, after: str = "") -> list[str]:
    text = path.read_text()
    return re.findall(r"```python\n(.*?)```", text[text.index(after) :], re.S)


def test_readme_quick_start(open_server: LiveServer) -> None:
    code = python_blocks(ROOT / "README.md", "## Quick start: the Python client")[0]
    assert URL in code
    exec(compile(code.replace(URL, open_server.url), "README.md", "exec"), {})


def test_client_md_examples(open_server: LiveServer) -> None:
    blocks = [b for b in python_blocks(ROOT / "docs" / "CLIENT.md") if URL in b]
    assert len(blocks) >= 3
    for code in blocks:
        exec(compile(code.replace(URL, open_server.url), "docs/CLIENT.md", "exec"), {})
