"""Print the pins of the serving dependencies as installed here: constraints.txt.

    python .ci/constraints.py > constraints.txt

Run it in an environment where the test suite passed (the pins are then versions that were
tested together). It walks the requirements of pyproject.toml's `[project] dependencies`
(and of its `serve` extra, if there is one) through the installed distributions' metadata,
extras and environment markers included, and prints `name==version` for each one reached.
The Dockerfile and .ci/run install with `-c constraints.txt`.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def closure(roots: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    todo = [Requirement(r) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            sys.exit(f"{req.name} is required but not installed here")
        pins[canonicalize_name(req.name)] = dist.version
        for line in dist.requires or []:
            sub = Requirement(line)
            extras = req.extras or {""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return pins


def main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = [*project["dependencies"], *project.get("optional-dependencies", {}).get("serve", [])]
    pins = closure(roots)
    print("# Serving dependencies as tested together; made by: python .ci/constraints.py")
    print(f"# (Python {sys.version_info.major}.{sys.version_info.minor}, {sys.platform})")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")


if __name__ == "__main__":
    main()
