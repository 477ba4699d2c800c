"""Hold the engines of every accepted model version, keyed by name and version.

The highest version of a name is its default. Building is separate from finding
(repository.py): a version whose graph ONNX Runtime refuses is dropped with a log line,
while `ProviderUnavailable` (PEEPHOLE_PROVIDER=cuda without CUDA) stops the start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from app.errors import ModelNotFound
from app.inference.engine import Engine, EngineError, ProviderUnavailable
from app.inference.repository import ModelVersion, ScanResult

log = logging.getLogger("peephole.registry")


class ModelRegistry:
    """name -> version -> Engine, with the newest version as default."""

    def __init__(
        self, engines: Iterable[Engine] = (), refused: dict[str, str] | None = None
    ) -> None:
        self._models: dict[str, dict[int, Engine]] = {}
        self.refused: dict[str, str] = dict(refused or {})
        for e in engines:
            self.add(e)

    @classmethod
    def build(cls, scan: ScanResult, provider: str, intra_op_threads: int) -> ModelRegistry:
        reg = cls(refused=scan.refused)
        for mv in scan.accepted:
            reg.load(mv, provider, intra_op_threads)
        return reg

    def load(self, mv: ModelVersion, provider: str, intra_op_threads: int) -> Engine | None:
        key = f"{mv.name}/{mv.version}"
        try:
            engine = Engine(mv, provider=provider, intra_op_threads=intra_op_threads)
        except ProviderUnavailable:
            raise
        except EngineError as e:
            self.refused[key] = str(e)
            log.error("refusing model %s: %s", key, e)
            return None
        self.add(engine)
        return engine

    def add(self, engine: Engine) -> None:
        """Add (or replace) a version; the new engine is built before the old one is dropped."""
        self._models.setdefault(engine.name, {})[engine.version] = engine

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        return sorted(self._models.get(name, {}))

    def engines(self) -> list[Engine]:
        return [e for n in self.names() for e in (self._models[n][v] for v in self.versions(n))]

    def get(self, name: str, version: int | str | None = None) -> Engine:
        """The engine of `name` at `version` (newest when None); 404 when unknown."""
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"unknown model {name!r}")
        if version is None:
            return versions[max(versions)]
        v = _parse_version(version)
        if v is None or v not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version!r}")
        return versions[v]

    def __len__(self) -> int:
        return sum(len(v) for v in self._models.values())


def _parse_version(version: int | str) -> int | None:
    if isinstance(version, bool):
        return None
    if isinstance(version, int):
        return version if version >= 1 else None
    s = str(version)
    return int(s) if s.isdigit() and s.isascii() and len(s) < 19 else None
