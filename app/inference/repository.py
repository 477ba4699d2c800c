"""Find model versions on disk: `models/<name>/<version>/model.json` + `model.onnx`.

Finding is separate from holding (see registry.py). A version whose card is invalid, whose
files are missing or whose sha256 does not match is refused with one log line saying why;
the rest of the repository is still served (CONTRACT section 1).
"""

from __future__ import annotations

import logging
import re
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
    try:
        card = ModelCard.model_validate_json(card_path.read_bytes())
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
    return ModelVersion(name=name, version=version, path=path, card=card)


def scan_repository(root: Path) -> ScanResult:
    """Every `<name>/<version>` under root, accepted or refused (with a log line each)."""
    result = ScanResult()
    if not root.is_dir():
        log.error("model repository %s is not a directory; serving no models", root)
        return result
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not _NAME.match(model_dir.name):
            log.warning("ignoring %s: not a valid model name", model_dir)
            continue
        versions = (p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        for version_dir in sorted(versions):
            key = f"{model_dir.name}/{version_dir.name}"
            if not _VERSION.match(version_dir.name):
                log.warning("ignoring %s: version is not a positive integer", version_dir)
                continue
            try:
                mv = load_version(version_dir, model_dir.name, int(version_dir.name))
            except RefusedVersion as e:
                result.refused[key] = str(e)
                log.error("refusing model %s: %s", key, e)
                continue
            except OSError as e:
                result.refused[key] = f"unreadable: {e}"
                log.error("refusing model %s: unreadable: %s", key, e)
                continue
            result.accepted.append(mv)
    return result
