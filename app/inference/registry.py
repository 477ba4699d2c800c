"""Hold the engines of the served model versions, keyed by name and version.

The highest ready version of a name is its default. Building is separate from finding
(repository.py): a version whose graph ONNX Runtime refuses is dropped with a log line,
while `ProviderUnavailable` (PEEPHOLE_PROVIDER=cuda without CUDA) stops the start.

The registry changes at run time (app/inference/control.py loads and unloads), but readers
never lock: every change builds a new immutable `Snapshot` and swaps it in with one
assignment, so a request sees one consistent view and the engine it took stays valid (and
its ONNX Runtime sessions alive) until the request lets go of it. A version is in one of:

- ready: serves everything (predict, new sessions, steps);
- draining: unloaded, but the sessions pinned to it keep stepping until they end, expire or
  its deadline passes; nothing new starts on it;
- retired: gone; its sessions answer 410 (`Gone`) until they are migrated or expire.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from app.errors import Gone, ModelNotFound, ModelUnavailable
from app.inference.engine import Engine, EngineError, ProviderUnavailable
from app.inference.repository import ModelVersion, ScanResult

log = logging.getLogger("peephole.registry")

Key = tuple[str, int]


@dataclass(frozen=True)
class Draining:
    """An unloaded version whose sessions may still step until `deadline` (epoch seconds)."""

    engine: Engine
    since: float
    deadline: float
    cause: str


@dataclass(frozen=True)
class Retired:
    """A version whose drain ended: why, and when (epoch seconds)."""

    at: float
    reason: str
    identity: str  # of the files it served (ModelVersion.identity)


_EMPTY: Mapping = MappingProxyType({})  # type: ignore[type-arg]


def _empty() -> Mapping:  # type: ignore[type-arg]
    return _EMPTY


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the registry; never changed once published."""

    ready: Mapping[str, Mapping[int, Engine]] = field(default_factory=_empty)
    draining: Mapping[Key, Draining] = field(default_factory=_empty)
    retired: Mapping[Key, Retired] = field(default_factory=_empty)
    refused: Mapping[str, str] = field(default_factory=_empty)  # "<name>/<version>" -> why


def _frozen(d: dict) -> Mapping:  # type: ignore[type-arg]
    return MappingProxyType(d)


class ModelRegistry:
    """name -> version -> Engine, with the newest ready version as default."""

    def __init__(
        self, engines: Iterable[Engine] = (), refused: dict[str, str] | None = None
    ) -> None:
        self._lock = threading.Lock()  # writers only; readers take `self._snap` as it is
        self._snap = Snapshot(refused=_frozen(dict(refused or {})))
        for e in engines:
            self.add(e)

    @classmethod
    def build(cls, scan: ScanResult, provider: str, intra_op_threads: int) -> ModelRegistry:
        reg = cls(refused=scan.refused)
        for mv in scan.accepted:
            reg.load(mv, provider, intra_op_threads)
        return reg

    def load(self, mv: ModelVersion, provider: str, intra_op_threads: int) -> Engine | None:
        """Build and add one version; a graph ONNX Runtime refuses is recorded as refused."""
        try:
            engine = Engine(mv, provider=provider, intra_op_threads=intra_op_threads)
        except ProviderUnavailable:
            raise
        except EngineError as e:
            self.refuse(f"{mv.name}/{mv.version}", str(e))
            log.error("refusing model %s/%s: %s", mv.name, mv.version, e)
            return None
        self.add(engine)
        return engine

    # -- reading (lock-free) -------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        return self._snap

    @property
    def refused(self) -> Mapping[str, str]:
        return self._snap.refused

    def names(self) -> list[str]:
        return sorted(self._snap.ready)

    def versions(self, name: str) -> list[int]:
        return sorted(self._snap.ready.get(name, ()))

    def default_version(self, name: str) -> int | None:
        versions = self._snap.ready.get(name)
        return max(versions) if versions else None

    def engines(self) -> list[Engine]:
        ready = self._snap.ready
        return [ready[n][v] for n in sorted(ready) for v in sorted(ready[n])]

    def get(self, name: str, version: int | str | None = None) -> Engine:
        """The ready engine of `name` at `version` (newest when None); 404 otherwise.

        For new work only: a draining version takes no new sessions or predictions.
        """
        snap = self._snap
        versions = snap.ready.get(name)
        v = None if version is None else _parse_version(version)
        if versions and version is None:
            return versions[max(versions)]
        if versions and v in versions:
            return versions[v]  # type: ignore[index]
        if v is not None and (name, v) in snap.draining:
            raise ModelNotFound(
                f"model {name!r} version {v} is being unloaded (draining): only the sessions "
                "already on it may use it"
            )
        if not versions:
            raise ModelNotFound(f"unknown model {name!r}")
        raise ModelNotFound(f"model {name!r} has no version {version!r}")

    def pinned(self, name: str, version: int, retry_after: int = 1) -> Engine:
        """The engine a session pinned to name/version steps on: ready or draining.

        A retired version is 410 (`Gone`); one this server does not hold is 503 with
        Retry-After (`ModelUnavailable`): another replica may hold it, or it may be loading.
        """
        snap = self._snap
        engine = snap.ready.get(name, _EMPTY).get(version)
        if engine is not None:
            return engine  # type: ignore[no-any-return]
        drain = snap.draining.get((name, version))
        if drain is not None:
            return drain.engine
        retired = snap.retired.get((name, version))
        if retired is not None:
            raise Gone(f"model {name!r} version {version} was unloaded ({retired.reason})")
        raise ModelUnavailable(
            retry_after, f"model {name!r} version {version} is not loaded on this server; retry"
        )

    def find(self, name: str, version: int) -> Engine | None:
        """The ready or draining engine of name/version, if any."""
        snap = self._snap
        engine = snap.ready.get(name, _EMPTY).get(version)
        if engine is None and (name, version) in snap.draining:
            engine = snap.draining[(name, version)].engine
        return engine

    def __len__(self) -> int:
        return sum(len(v) for v in self._snap.ready.values())

    # -- changing (one writer at a time; each change publishes a new snapshot) -------------

    def _publish(self, **changes: Mapping) -> None:  # type: ignore[type-arg]
        self._snap = replace(self._snap, **{k: _frozen(dict(v)) for k, v in changes.items()})

    def add(self, engine: Engine) -> None:
        """Serve `engine` (a new version, or the same files again): it becomes ready, and the
        default when it is the highest. Whatever it replaces is dropped after the swap."""
        key = (engine.name, engine.version)
        with self._lock:
            snap = self._snap
            ready = {n: dict(vs) for n, vs in snap.ready.items()}
            ready.setdefault(engine.name, {})[engine.version] = engine
            draining = {k: d for k, d in snap.draining.items() if k != key}
            retired = {k: r for k, r in snap.retired.items() if k != key}
            refused = {k: r for k, r in snap.refused.items() if k != f"{key[0]}/{key[1]}"}
            self._publish(ready=ready, draining=draining, retired=retired, refused=refused)

    def drain(self, name: str, version: int, since: float, deadline: float, cause: str) -> bool:
        """Stop serving new work on a ready version; its sessions keep stepping. False if it
        was not ready (already draining, retired or unknown)."""
        with self._lock:
            snap = self._snap
            engine = snap.ready.get(name, _EMPTY).get(version)
            if engine is None:
                return False
            ready = {n: dict(vs) for n, vs in snap.ready.items()}
            del ready[name][version]
            if not ready[name]:
                del ready[name]
            draining = {**snap.draining, (name, version): Draining(engine, since, deadline, cause)}
            self._publish(ready=ready, draining=draining)
            return True

    def undrain(self, name: str, version: int) -> bool:
        """A draining version serves again (loaded once more with the same files)."""
        with self._lock:
            drain = self._snap.draining.get((name, version))
        if drain is None:
            return False
        self.add(drain.engine)
        return True

    def retire(self, name: str, version: int, at: float, reason: str) -> Engine | None:
        """Drop a draining or ready version; its sessions answer 410 from now on. Returns the
        engine that was dropped (freed once the last request holding it ends)."""
        key = (name, version)
        with self._lock:
            snap = self._snap
            ready = {n: dict(vs) for n, vs in snap.ready.items()}
            engine = ready.get(name, {}).pop(version, None)
            if name in ready and not ready[name]:
                del ready[name]
            draining = dict(snap.draining)
            drain = draining.pop(key, None)
            engine = engine or (drain.engine if drain else None)
            if engine is None:
                return None
            retired = {**snap.retired, key: Retired(at, reason, engine.identity)}
            self._publish(ready=ready, draining=draining, retired=retired)
            return engine

    def refuse(self, key: str, why: str) -> None:
        with self._lock:
            self._publish(refused={**self._snap.refused, key: why})

    def forget_refused(self, key: str) -> None:
        with self._lock:
            if key in self._snap.refused:
                self._publish(refused={k: r for k, r in self._snap.refused.items() if k != key})


def _parse_version(version: int | str) -> int | None:
    if isinstance(version, bool):
        return None
    if isinstance(version, int):
        return version if version >= 1 else None
    s = str(version)
    return int(s) if s.isdigit() and s.isascii() and len(s) < 19 else None
