"""Model control: load, unload and drain model versions while serving, without downtime.

PEEPHOLE_MODEL_CONTROL picks who changes what is served:
- `none` (default): the repository is read once at start;
- `poll`: it is re-read every PEEPHOLE_MODEL_POLL_SECONDS. A new version directory is
  validated (card, sha256, an ONNX Runtime session and a warm-up run) once its files held
  still for one interval, and serves when it passes (the default when it is the highest).
  One that fails is refused with a log line and a metric, and is tried again when its files
  change: a version being copied in is never served half-written nor refused for good. A
  served version whose files change or go away is unloaded;
- `explicit`: only the API (`load`, `unload`) changes anything.

Unloading drains: the version takes no new sessions or predictions, the sessions pinned to it
keep stepping until none is left or PEEPHOLE_DRAIN_SECONDS pass; then it is freed (its ONNX
Runtime sessions go once the last request holding the engine ends) and its remaining
sessions answer 410. Whatever served before keeps serving throughout: every change is one
atomic swap of the registry's snapshot (registry.py), and validation runs in one loader
thread, off the event loop.

A version's files are its identity (the sha256 of its card, which holds the sha256 of every
graph). The same number with other files is loaded only once no session can still be
pinned to the old files, which this server can tell only for its in-process session store;
elsewhere it waits for a restart (publish a changed model as a new version).

`index()`, `load(name, version)` and `unload(name, version)` are the protocol-free API
(/v1, KServe v2 and gRPC routes call them); `request(name, version)` is the data plane's
on-demand load in poll mode (a replica asked for a session on a version it lacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from app.config import Settings
from app.errors import ControlDisabled, ModelNotFound, ModelRefused
from app.inference.engine import Engine, EngineError
from app.inference.registry import Key, ModelRegistry
from app.inference.repository import (
    Fingerprint,
    ModelVersion,
    RefusedVersion,
    fingerprint,
    validate_version,
    version_dirs,
)
from app.metrics import Metrics
from app.sessions.base import iso

log = logging.getLogger("peephole.control")
T = TypeVar("T")

State = Literal["ready", "loading", "draining", "unloaded", "refused", "available"]
# Triton's names for the same states (the repository extension's index)
TRITON_STATE: dict[str, str] = {
    "ready": "READY",
    "loading": "LOADING",
    "draining": "UNLOADING",
    "unloaded": "UNAVAILABLE",
    "refused": "UNAVAILABLE",
    "available": "UNAVAILABLE",
}
DRAIN_TICK_SECONDS = 0.25
ON_DEMAND_SECONDS = 1  # at most one on-demand look per version this often


@dataclass(frozen=True)
class VersionStatus:
    """One version as the repository index shows it."""

    name: str
    version: int
    state: State
    reason: str = ""
    deadline: float | None = None  # draining: when its remaining sessions start to get 410


@dataclass
class _Watch:
    """What the poller knows of one version directory."""

    seen: Fingerprint | None = None  # at the last look
    tried: Fingerprint | None = None  # when it was last validated
    served: Fingerprint | None = None  # of the files the served engine came from
    waiting: str = ""  # identity of valid files waiting for the old files' sessions to go
    asked: float = 0.0  # monotonic time of the last on-demand load


Listing = dict[Key, tuple[Path, Fingerprint]]


def _release_memory() -> None:
    """Return freed heap to the system, so that an unload shows in RSS (glibc keeps it)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


class ModelControl:
    """Loads, unloads and drains the versions of one registry (see the module doc)."""

    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        *,
        store: Any = None,
        metrics: Metrics | None = None,
        forget: Callable[[Engine], None] | None = None,
        intra_op_threads: int = 1,
    ) -> None:
        self.registry = registry
        self.mode = settings.model_control
        self.root = Path(settings.model_repository)
        self.poll_seconds = settings.model_poll_seconds
        self.drain_seconds = settings.drain_seconds
        self.provider = settings.provider
        self.intra_op_threads = intra_op_threads
        self.store = store
        self.metrics = metrics
        self._forget = forget  # the runner drops an unloaded engine's queue
        self._lock = asyncio.Lock()  # one change at a time
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="peephole-load")
        self._watch: dict[Key, _Watch] = {}
        self._loading: set[Key] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._root_missing = False

    @property
    def retry_after(self) -> int:
        """Seconds a client should wait for a version this server does not hold (yet): poll
        mode looks for it at once (`request`), elsewhere only an operator loads it."""
        return ON_DEMAND_SECONDS if self.mode == "poll" else 5

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Note the files of what is served, then poll and watch drains as the mode says."""
        listing = await self._run(self._look)
        for key, (_, fp) in (listing or {}).items():
            w = self._watch[key] = _Watch(seen=fp)
            if self.registry.find(*key) is not None:
                w.served = w.tried = fp  # refused ones are tried once more (maybe half-copied)
        if self.metrics is not None:  # what the start loaded and refused counts as well
            for e in self.registry.engines():
                self.metrics.model_loads.labels(e.name, str(e.version), "loaded").inc()
            for refused in self.registry.refused:
                name, _, version = refused.rpartition("/")
                self.metrics.model_loads.labels(name, version, "refused").inc()
        if self.mode == "poll":
            self._spawn(self._every(self.poll_seconds, self.poll))
        if self.mode != "none":
            self._spawn(self._every(DRAIN_TICK_SECONDS, self.check_drains))
        self._gauge()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.to_thread(self._loader.shutdown, True, cancel_futures=True)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _every(self, seconds: float, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await fn()
            except Exception:  # the loop must outlive any one failure
                log.exception("model control: %s failed", fn.__name__)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking work (file system, ONNX Runtime) in the loader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._loader, fn, *args)

    # -- the API -----------------------------------------------------------------------------

    async def index(self, ready: bool = False, name: str | None = None) -> list[VersionStatus]:
        """Every version in the repository or held here, with its state (Triton's index).

        Read in a thread of its own, not the loader's: an index never waits for a load."""
        listing = await asyncio.to_thread(self._look, name) or {}
        return self._statuses(listing, name, ready)

    async def load(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Load (validate, build, warm up) every version of `name` in the repository, or one.

        ModelNotFound when the repository has no such model or version; ModelRefused, naming
        each version and why, when any fails (the others still load, what served before keeps
        serving). Loading a version already loaded with the same files changes nothing; a
        draining one serves again.
        """
        self._explicit_only()
        async with self._lock:
            listing = await self._run(self._look, name)
            if listing is None:
                raise ModelRefused(f"the model repository {self.root} is not readable")
            found = {v: entry for (_, v), entry in listing.items()}
            if version is not None:
                if version not in found:
                    if self.registry.find(name, version) is None:
                        raise ModelNotFound(
                            f"model {name!r} has no version {version} in the repository"
                        )
                    return self._statuses(listing, name)  # served, its files removed since
                found = {version: found[version]}
            if not found:
                raise ModelNotFound(f"model {name!r} is not in the repository")
            errors = []
            for v, (path, fp) in sorted(found.items()):
                why = await self._load_one((name, v), path, fp)
                if why:
                    errors.append(f"version {v}: {why}")
            if errors:
                raise ModelRefused(f"failed to load {name!r}: " + "; ".join(errors))
            return self._statuses(listing, name)

    async def unload(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Unload one ready version of `name`, or all: each drains while sessions remain.

        ModelNotFound when this server neither holds nor finds such a model or version;
        unloading what is already unloaded or draining changes nothing.
        """
        self._explicit_only()
        async with self._lock:
            # no snapshot is kept across the awaits below: it would keep unloaded engines alive
            ready = sorted(self.registry.snapshot.ready.get(name, {}))
            targets = ready if version is None else [v for v in ready if v == version]
            if not targets:
                listing = await self._run(self._look, name) or {}
                snap = self.registry.snapshot
                held = (*listing, *snap.draining, *snap.retired)
                del snap
                known = {v for n, v in held if n == name}
                if not known or (version is not None and version not in known):
                    what = f"version {version} of model {name!r}" if version else f"model {name!r}"
                    raise ModelNotFound(f"{what} is neither loaded nor in the repository")
            for v in targets:
                await self._unload_one(name, v, "api")
            return self._statuses({}, name)

    def request(self, name: str, version: int) -> None:
        """A session on name/version reached this server, which does not hold it: in poll
        mode, load it from the repository in the background (one look per second at most)."""
        if self.mode != "poll" or (name, version) in self._loading:
            return
        w = self._watch.setdefault((name, version), _Watch())
        now = time.monotonic()
        if now - w.asked < ON_DEMAND_SECONDS:
            return
        w.asked = now
        self._spawn(self._on_demand(name, version))

    def _explicit_only(self) -> None:
        if self.mode != "explicit":
            raise ControlDisabled(
                "model load and unload are allowed only with PEEPHOLE_MODEL_CONTROL=explicit "
                f"(this server runs {self.mode!r}: "
                + ("the repository decides" if self.mode == "poll" else "fixed at start")
                + ")"
            )

    # -- polling -------------------------------------------------------------------------

    async def poll(self) -> None:
        """One look at the repository: load what is new and still, unload what went or
        changed, retry what was refused once its files change."""
        async with self._lock:
            listing = await self._run(self._look)
            if listing is None:
                if not self._root_missing:
                    log.error("model repository %s is not readable; nothing changes", self.root)
                self._root_missing = True
                return
            self._root_missing = False
            ready = [(n, v) for n, vs in self.registry.snapshot.ready.items() for v in vs]
            for key in sorted(k for k in ready if k not in listing):
                await self._unload_one(*key, "removed")
            for key in [k for k in self._watch if k not in listing]:
                del self._watch[key]
                self.registry.forget_refused(f"{key[0]}/{key[1]}")
            for key, (path, fp) in sorted(listing.items()):
                w = self._watch.setdefault(key, _Watch())
                still, w.seen = fp == w.seen, fp
                served = key[1] in self.registry.snapshot.ready.get(key[0], {})
                if not still or (served and fp == w.served):
                    continue
                if fp != w.tried or w.waiting:
                    await self._load_one(key, path, fp)

    async def _on_demand(self, name: str, version: int) -> None:
        async with self._lock:
            if self.registry.find(name, version) is not None:
                return
            listing = await self._run(self._look, name) or {}
            entry = listing.get((name, version))
            w = self._watch.setdefault((name, version), _Watch())
            if entry is None or (entry[1] == w.tried and not w.waiting):
                return  # not here, or refused with these very files (poll retries on change)
            log.info("loading %s/%s on demand (a session on it reached this server)", name, version)
            await self._load_one((name, version), *entry)

    def _look(self, only: str | None = None) -> Listing | None:
        """Every version directory (or model `only`'s) with its fingerprint; None when the
        repository itself cannot be read (then nothing is unloaded for being missing)."""
        try:
            if not self.root.is_dir():
                return None
            return {(n, v): (p, fingerprint(p)) for n, v, p in version_dirs(self.root, only, True)}
        except OSError:
            return None

    # -- loading -------------------------------------------------------------------------

    async def _load_one(self, key: Key, path: Path, fp: Fingerprint) -> str:
        """Validate and serve one version; '' when it serves, else why not (refused).

        Other files under a served number replace it in one swap when no session can be on
        it; otherwise (poll mode) the old files drain and the new ones wait for them.
        """
        name, version = key
        w = self._watch.setdefault(key, _Watch())
        w.tried = fp
        replaced: Engine | None = None
        self._loading.add(key)
        try:
            mv = await self._run(validate_version, path, name, version)
            held = self.registry.find(name, version)
            if held is not None and held.identity == mv.identity:
                if self.registry.undrain(name, version):
                    log.info("model %s/%s serves again (loaded with the same files)", *key)
                    self._count_load(key, "loaded")
                w.served, w.waiting = fp, ""
                return ""
            if held is not None and version in self.registry.snapshot.ready.get(name, {}):
                if self.mode != "poll":
                    raise RefusedVersion(
                        "it is loaded with other files; unload it first (its sessions drain)"
                    )
                if self._pinned(name, version) == 0:
                    replaced = held
                else:
                    del held  # no reference may outlive its drain (memory is freed then)
                    await self._unload_one(name, version, "changed")
            held = None
            why = "" if replaced else self._waiting_for_sessions(key, mv)
            if why:
                return self._refuse(key, why, quiet=w.waiting == mv.identity, waiting=mv)
            engine = await self._run(self._build, mv)
        except (RefusedVersion, EngineError) as e:
            return self._refuse(key, str(e))
        finally:
            self._loading.discard(key)
        self.registry.add(engine)
        w.served, w.waiting = fp, ""
        default = self.registry.default_version(name) == version
        log.info(
            "model %s/%s loaded%s%s",
            name,
            version,
            " in place of its old files (no session was on them)" if replaced else "",
            " (now the default)" if default else "",
        )
        self._count_load(key, "loaded")
        if replaced is not None:
            if self.metrics is not None:
                self.metrics.model_unloads.labels(name, str(version), "changed").inc()
                self.metrics.model_freed.labels(name, str(version), "idle").inc()
            self._drop(replaced)
            del replaced, engine
            await self._run(_release_memory)
        return ""

    def _build(self, mv: ModelVersion) -> Engine:
        return Engine(mv, provider=self.provider, intra_op_threads=self.intra_op_threads)

    def _waiting_for_sessions(self, key: Key, mv: ModelVersion) -> str:
        """Why other files under this number cannot serve yet ('' when they can)."""
        snap = self.registry.snapshot
        drain = snap.draining.get(key)
        if drain is not None and drain.engine.identity != mv.identity:
            return (
                f"version {key[1]} is draining with other files; these load once its sessions "
                f"are gone (by {iso(drain.deadline)})"
            )
        retired = snap.retired.get(key)
        if retired is None or retired.identity == mv.identity:
            return ""
        live = self._pinned(*key)
        if live == 0:
            return ""
        if live is None:
            return (
                "its files changed since this server served it, and sessions on the old files "
                "may still be live (they answer 410); publish the change as a new version"
            )
        return (
            f"its files changed since this server served it and {live} sessions on the old "
            "files are still live (they answer 410); publish the change as a new version, or "
            "migrate or delete those sessions"
        )

    def _refuse(self, key: Key, why: str, quiet: bool = False,
                waiting: ModelVersion | None = None) -> str:  # fmt: skip
        """Record and report a refusal (once per reason for files waiting on sessions)."""
        w = self._watch.setdefault(key, _Watch())
        w.waiting = waiting.identity if waiting is not None else ""
        self.registry.refuse(f"{key[0]}/{key[1]}", why)
        if not quiet:
            log.error("refusing model %s/%s: %s", key[0], key[1], why)
            self._count_load(key, "refused")
        return why

    def _count_load(self, key: Key, result: str) -> None:
        if self.metrics is not None:
            self.metrics.model_loads.labels(key[0], str(key[1]), result).inc()
        self._gauge()

    # -- unloading and draining ----------------------------------------------------------------

    async def _unload_one(self, name: str, version: int, cause: str) -> None:
        now = time.time()
        if not self.registry.drain(name, version, now, now + self.drain_seconds, cause):
            return
        log.info(
            "model %s/%s unloaded (%s): its sessions may step until %s",
            name,
            version,
            cause,
            iso(now + self.drain_seconds),
        )
        if self.metrics is not None:
            self.metrics.model_unloads.labels(name, str(version), cause).inc()
        self._gauge()
        await self._check_drain((name, version))

    async def check_drains(self) -> None:
        """Free each draining version whose sessions are gone or whose deadline passed."""
        if not self.registry.snapshot.draining:
            return
        async with self._lock:
            for key in list(self.registry.snapshot.draining):
                await self._check_drain(key)

    async def _check_drain(self, key: Key) -> None:
        drain = self.registry.snapshot.draining.get(key)
        if drain is None:
            return
        now = time.time()
        if now >= drain.deadline:
            end, reason = "deadline", f"its drain deadline passed at {iso(drain.deadline)}"
        elif self._pinned(*key) == 0:
            end, reason = "idle", "unloaded when no session was left on it"
        else:
            return
        engine = self.registry.retire(*key, now, reason)
        if engine is None:
            return
        log.info("model %s/%s freed (%s)", key[0], key[1], reason)
        if self.metrics is not None:
            self.metrics.model_freed.labels(key[0], str(key[1]), end).inc()
        self._gauge()
        self._drop(engine)
        del engine, drain
        await self._run(_release_memory)

    def _drop(self, engine: Engine) -> None:
        """The runner forgets the engine; once the caller lets go too, the engine (and its
        ONNX Runtime sessions) is freed as soon as the last request holding it ends."""
        if self._forget is not None:
            self._forget(engine)

    def _pinned(self, name: str, version: int) -> int | None:
        """Live sessions pinned to name/version, when the store can tell (in process)."""
        count = getattr(self.store, "count_pinned", None)
        return None if count is None else int(count(name, version))

    def _gauge(self) -> None:
        if self.metrics is not None:
            snap = self.registry.snapshot
            self.metrics.model_versions.labels("ready").set(len(self.registry))
            self.metrics.model_versions.labels("draining").set(len(snap.draining))

    # -- the index -----------------------------------------------------------------------------

    def _statuses(self, listing: Listing, name: str | None = None,
                  ready_only: bool = False) -> list[VersionStatus]:  # fmt: skip
        snap = self.registry.snapshot
        keys: set[Key] = set(listing) | set(snap.draining) | set(snap.retired) | self._loading
        keys |= {(n, v) for n, vs in snap.ready.items() for v in vs}
        for k in snap.refused:
            n, _, v = k.rpartition("/")
            if v.isdigit():
                keys.add((n, int(v)))
        out = []
        for key in sorted(k for k in keys if name is None or k[0] == name):
            status = self._status(key)
            if not ready_only or status.state == "ready":
                out.append(status)
        return out

    def _status(self, key: Key) -> VersionStatus:
        snap = self.registry.snapshot
        name, version = key
        refused = snap.refused.get(f"{name}/{version}")
        if key in self._loading:
            return VersionStatus(name, version, "loading", "validating and warming up")
        if version in snap.ready.get(name, {}):
            return VersionStatus(name, version, "ready", "")
        drain = snap.draining.get(key)
        if drain is not None:
            live = self._pinned(name, version)
            sessions = "its sessions" if live is None else f"its {live} live session(s)"
            why = f"unloaded ({drain.cause}); {sessions} may step until {iso(drain.deadline)}"
            return VersionStatus(name, version, "draining", why, drain.deadline)
        if refused is not None:
            return VersionStatus(name, version, "refused", refused)
        retired = snap.retired.get(key)
        if retired is not None:
            return VersionStatus(name, version, "unloaded", retired.reason)
        return VersionStatus(name, version, "available", "in the repository, not loaded")
