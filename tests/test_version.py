"""One version source: the app reports pyproject.toml's version."""

from __future__ import annotations

import tomllib

from app.main import create_app
from app.version import _PYPROJECT, __version__


def test_app_version_is_pyprojects() -> None:
    declared = tomllib.loads(_PYPROJECT.read_text())["project"]["version"]
    assert __version__ == declared
    assert create_app().version == declared
