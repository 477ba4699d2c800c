"""The service's version: pyproject.toml's `[project] version`, the one place it is written.

Installed (the image, a wheel), the version is the installed distribution's metadata. In a
source checkout the pyproject.toml beside the package is read instead: it is the source, and
an installed copy elsewhere in the environment may be older.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DISTRIBUTION = "peephole"
_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _version() -> str:
    try:
        project = tomllib.loads(_PYPROJECT.read_text(encoding="utf-8"))["project"]
        if project.get("name") == DISTRIBUTION:
            return str(project["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _version()
