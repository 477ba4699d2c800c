"""Find model versions on disk: `models/<name>/<version>/model.json` + `model.onnx`.

Finding is separate from holding (see registry.py). A version whose card is invalid, whose
files are missing or whose sha256 does not match is refused with one log line saying why;
the rest of the repository is still served (docs/API.md, "The model repository").

Model control (control.py) re-reads the repository while serving: `version_dirs` lists it
and `fingerprint` says, from file sizes and modification times alone, whether a version's
files changed since the last look (a version being copied in is validated only once its
fingerprint holds still).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from app.inference.card import NAME_PATTERN, ModelCard, sha256_file, state_layout

log = logging.getLogger("peephole.repository")

_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")


@dataclass(frozen=True)
class ModelVersion:
    """One accepted version: its card and the paths of its graphs."""

    name: str
    version: int
    path: Path
    card: ModelCard
    # sha256 of model.json: the card holds the sha256 of every graph, so this names the files
    identity: str = ""

    @property
    def graph(self) -> Path:
        return self.path / "model.onnx"

    @property
    def internals_graph(self) -> Path | None:
        g = self.card.onnx.internals
        return self.path / g.file if g else None

    @property
    def cuda_graph(self) -> Path | None:
        g = self.card.onnx.cuda
        return self.path / g.file if g else None


@dataclass
class ScanResult:
    accepted: list[ModelVersion] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # "<name>/<version>" -> why


class RefusedVersion(Exception):
    """Why one version cannot be served."""


def _check_file(base: Path, file: str, sha256: str, what: str) -> None:
    path = (base / file).resolve()
    if base.resolve() not in path.parents:
        raise RefusedVersion(f"{what} path {file!r} leaves the version directory")
    if not path.is_file():
        raise RefusedVersion(f"{what} {file} is missing")
    actual = sha256_file(path)
    if actual != sha256.lower():
        raise RefusedVersion(f"{what} {file} sha256 {actual} does not match the card's {sha256}")


def load_version(path: Path, name: str, version: int) -> ModelVersion:
    """Validate one version directory; raise RefusedVersion with the reason."""
    card_path = path / "model.json"
    if not card_path.is_file():
        raise RefusedVersion("model.json is missing")
    raw = card_path.read_bytes()
    try:
        card = ModelCard.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise RefusedVersion(
            f"invalid model card ({e.error_count()} errors; {loc}: {first['msg']})"
        ) from e
    if card.name != name or card.version != version:
        raise RefusedVersion(
            f"card says {card.name}/{card.version}, directory says {name}/{version}"
        )
    expected = [s.model_dump() for s in state_layout(card.architecture, card.critic)]
    if [s.model_dump() for s in card.state] != expected:
        raise RefusedVersion("card's state tensors do not match its architecture")
    _check_file(path, "model.onnx", card.onnx.sha256, "graph")
    for what, g in (("internals graph", card.onnx.internals), ("cuda graph", card.onnx.cuda)):
        if g is not None:
            _check_file(path, g.file, g.sha256, what)
    identity = hashlib.sha256(raw).hexdigest()
    return ModelVersion(name=name, version=version, path=path, card=card, identity=identity)


def validate_version(path: Path, name: str, version: int) -> ModelVersion:
    """`load_version`, with an unreadable directory refused like any other reason."""
    try:
        return load_version(path, name, version)
    except OSError as e:
        raise RefusedVersion(f"unreadable: {e}") from e


def version_dirs(root: Path, only: str | None = None, quiet: bool = False) -> Iterator[
        tuple[str, int, Path]]:  # fmt: skip
    """(name, version, directory) of every well-named `<name>/<version>` under root (or of
    model `only`), sorted; badly named entries are skipped with a warning unless `quiet`."""
    models = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for model_dir in models:
        if only is not None and model_dir.name != only:
            continue
        if not _NAME.match(model_dir.name):
            if not quiet:
                log.warning("ignoring %s: not a valid model name", model_dir)
            continue
        try:
            entries = sorted(
                p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
        except OSError as e:
            log.warning("cannot list %s: %s", model_dir, e)
            continue
        for version_dir in entries:
            if not _VERSION.match(version_dir.name):
                if not quiet:
                    log.warning("ignoring %s: version is not a positive integer", version_dir)
                continue
            yield model_dir.name, int(version_dir.name), version_dir


Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(path: Path) -> Fingerprint:
    """(relative path, size, mtime in ns) of every file under a version directory, sorted.

    Cheap (no file is read): the poller compares it between two looks to tell a version
    that is still being written from one that holds still, and a changed one from the same.
    """
    out = []
    for base, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            full = os.path.join(base, f)
            try:
                st = os.stat(full)
            except OSError:
                continue  # vanished between the listing and the stat: it is changing
            out.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def scan_repository(root: Path) -> ScanResult:
    """Every `<name>/<version>` under root, accepted or refused (with a log line each)."""
    result = ScanResult()
    if not root.is_dir():
        log.error("model repository %s is not a directory; serving no models", root)
        return result
    for name, version, path in version_dirs(root):
        key = f"{name}/{version}"
        try:
            mv = validate_version(path, name, version)
        except RefusedVersion as e:
            result.refused[key] = str(e)
            log.error("refusing model %s: %s", key, e)
            continue
        result.accepted.append(mv)
    return result
