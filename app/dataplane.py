"""The data plane: what every protocol (/v1 JSON, KServe v2) calls to do the work.

Protocol routers parse their wire format into numpy and call this object; it owns the
limits, the session rules (offsets, exactly-once retries, serialisation through the store)
and hands inference to the runner (app/inference/batcher.py). No HTTP here.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from math import isfinite
from typing import Any, TypeVar

import numpy as np

from app.config import Settings
from app.errors import (
    Gone,
    InvalidInput,
    ModelUnavailable,
    OffsetConflict,
    PayloadTooLarge,
    StateLayoutConflict,
    StoreConflict,
    StoreUnavailable,
)
from app.inference.engine import Engine, EngineResult, Runner
from app.inference.registry import ModelRegistry
from app.metrics import Metrics
from app.sessions.base import (
    Session,
    SessionStore,
    batch_state,
    inputs_digest,
    new_session_id,
    now,
)

T = TypeVar("T")

# The largest offset a session may reach: 2**53 - 1, the largest integer every JSON client
# (JavaScript included) reads exactly and every store holds (a signed 64-bit integer in
# Redis and LMDB). A session stepping once a millisecond needs 285,000 years to get there.
MAX_OFFSET = 2**53 - 1


class SessionExists(Exception):
    """`create_session(..., if_absent=True)` found a live session with that id (`session`):
    the answer of a create that was already made, not an error."""

    def __init__(self, session: Session) -> None:
        super().__init__(session.session_id)
        self.session = session


@dataclass
class PredictResult:
    engine: Engine
    outputs: list[np.ndarray]  # per sequence: [T_b, O], or [O] without return_sequences
    states: list[dict[str, np.ndarray]] | None  # per sequence, no batch dimension
    internals: list[dict[str, Any]] | None  # per sequence, the documented internals form


@dataclass
class StepResult:
    session: Session
    outputs: np.ndarray  # [T, O]
    internals: dict[str, Any] | None
    retried: bool = False


def internals_of(ints: dict[str, np.ndarray], b: int, length: int) -> dict[str, Any]:
    """Sequence b's internals as docs/API.md lays them out (contiguous for orjson)."""
    gates = ints["gates"][b, :length]  # [T, blocks, 3]: input, forget, output
    return {
        "cell_states": np.ascontiguousarray(ints["cell_states"][b, :length]),
        "cell_outputs": np.ascontiguousarray(ints["cell_outputs"][b, :length]),
        "gates": {
            g: np.ascontiguousarray(gates[..., i])
            for i, g in enumerate(("input", "forget", "output"))
        },
    }


def _check_finite(result: EngineResult) -> None:
    """Finite but extreme inputs can overflow a linear output; refuse rather than send null."""
    if result.finite:  # the batcher checked the whole batch at once
        return
    # A float64 sum is finite exactly when every float32 entry is (no overflow is possible),
    # and it is one cheap reduction per array where isfinite().all() is two.
    if not isfinite(result.y.sum(dtype=np.float64)) or not all(
        isfinite(s.sum(dtype=np.float64)) for s in result.states.values()
    ):
        raise InvalidInput(
            "these inputs drive the model to non-finite values; are they in its range?"
        )


class DataPlane:
    """Models, prediction and sessions, independent of the wire protocol."""

    def __init__(
        self,
        registry: ModelRegistry,
        store: SessionStore,
        runner: Runner,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.runner = runner
        self.settings = settings
        self.metrics = metrics
        # Model control (app/inference/control.py) sets these: how long a client should wait
        # for a version this server lacks, and whom to tell (poll mode loads it on demand).
        self.retry_after = 5
        self.on_missing: Callable[[str, int], None] | None = None

    # -- models ------------------------------------------------------------------------

    def model(self, name: str, version: int | str | None = None) -> Engine:
        """The ready engine of name/version (newest when None), for new work; 404 otherwise
        (a draining version takes no new sessions or predictions)."""
        return self.registry.get(name, version)

    def pinned(self, s: Session) -> Engine:
        """The engine session `s` is pinned to, ready or draining: never another version.

        410 when that version was unloaded and its drain ended; 503 with Retry-After when this
        server does not hold it (another replica may; poll mode loads it on demand).
        """
        try:
            return self.registry.pinned(s.model, s.version, self.retry_after)
        except ModelUnavailable:
            if self.on_missing is not None:
                self.on_missing(s.model, s.version)
            raise
        except Gone as e:
            raise Gone(
                f"session {s.session_id!r} is pinned to a version that is no longer served: "
                f"{e.detail}; its state can still be exported, or the session migrated "
                "(POST /v1/sessions/{id}/migrate) to a version with the same state layout"
            ) from None

    def models(self) -> list[dict[str, Any]]:
        return [
            {
                "name": n,
                "versions": self.registry.versions(n),
                "default_version": max(self.registry.versions(n)),
            }
            for n in self.registry.names()
        ]

    def check_limits(self, batch: int, steps: int) -> None:
        """PEEPHOLE_MAX_BATCH_SIZE / PEEPHOLE_MAX_STEPS, for protocols that parse elsewhere."""
        if batch > self.settings.max_batch_size:
            raise PayloadTooLarge(f"{batch} sequences; the limit is {self.settings.max_batch_size}")
        if steps > self.settings.max_steps:
            raise PayloadTooLarge(f"{steps} time steps; the limit is {self.settings.max_steps}")

    def _check_internals(self, engine: Engine, internals: bool) -> None:
        if internals and not engine.has_internals:
            raise InvalidInput(f"model {engine.name}/{engine.version} has no internals graph")

    # -- prediction ----------------------------------------------------------------------

    async def infer(
        self,
        engine: Engine,
        x: np.ndarray,
        states: Mapping[str, np.ndarray] | None = None,
        lengths: np.ndarray | None = None,
        internals: bool = False,
    ) -> EngineResult:
        """Raw batched inference ([B, T, I] + states [B, ...]); the entry for other protocols."""
        self._check_internals(engine, internals)
        self.check_limits(x.shape[0], x.shape[1])
        result = await self.runner(engine, x, states, lengths, internals)
        _check_finite(result)
        return result

    async def predict(
        self,
        engine: Engine,
        x: np.ndarray,
        lengths: np.ndarray,
        states: dict[str, np.ndarray] | None = None,
        *,
        return_sequences: bool = True,
        return_state: bool = False,
        internals: bool = False,
    ) -> PredictResult:
        """Whole sequences: each one's outputs and final state are those of it alone."""
        r = await self.infer(engine, x, states, lengths, internals)
        n = [int(v) for v in lengths]
        outs = [r.y[b, : n[b]] if return_sequences else r.y[b, n[b] - 1] for b in range(len(n))]
        st = (
            [{k: v[b] for k, v in r.states.items()} for b in range(len(n))]
            if return_state
            else None
        )
        ints = [internals_of(r.internals, b, n[b]) for b in range(len(n))] if r.internals else None
        return PredictResult(engine, outs, st, ints)

    # -- sessions ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _store_op(self, op: str) -> AsyncIterator[None]:
        """Count store failures by operation (the one place the metric is fed)."""
        try:
            yield
        except StoreUnavailable:
            if self.metrics is not None:
                self.metrics.store_errors.labels(operation=op).inc()
            raise

    async def _change(
        self, session_id: str, op: str, apply: Callable[[Session], Awaitable[T]]
    ) -> T:
        """Run `apply` on the session under the store's lock and write the result back.

        A store shared by replicas writes optimistically (compare-and-set on a revision): when
        another replica wrote in between, the write raises StoreConflict and `apply` runs again
        on the fresh session, so every change lands exactly once, in one serial order.
        """
        for attempt in range(self.settings.store_conflict_retries):
            try:
                async with self.store.locked(session_id) as s:
                    return await apply(s)
            except StoreConflict:
                if self.metrics is not None:
                    self.metrics.store_conflicts.inc()
                await asyncio.sleep(random.uniform(0, 0.001 * min(attempt + 1, 20)))
            except StoreUnavailable:  # as _store_op counts it (one context manager less)
                if self.metrics is not None:
                    self.metrics.store_errors.labels(operation=op).inc()
                raise
        raise StoreConflict(f"session {session_id!r} is changed too often concurrently; retry")

    async def create_session(
        self,
        name: str,
        version: int | None = None,
        state: dict[str, np.ndarray] | None = None,
        offset: int | None = None,
        ttl_seconds: int | None = None,
        *,
        session_id: str | None = None,
        if_absent: bool = False,
    ) -> Session:
        """A new session at offset 0 from zeros, or restored from an exported state/offset.

        `session_id` lets a protocol choose the id (/v2 sequences derive it from the sequence
        id); a live session with that id is replaced, which is how a sequence starts over.
        With `if_absent` it is kept instead and raised as SessionExists: of concurrent creates
        of one id (an Idempotency-Key's retries), on any replica, exactly one creates.
        """
        engine = self.model(name, version)
        if offset is not None and state is None:
            raise InvalidInput("offset is only accepted together with state (restoring a session)")
        if offset is not None and not 0 <= offset <= MAX_OFFSET:
            raise InvalidInput(f"offset must be between 0 and {MAX_OFFSET}")
        ttl = self.settings.session_ttl_seconds if ttl_seconds is None else ttl_seconds
        if not 1 <= ttl <= self.settings.max_ttl_seconds:
            raise InvalidInput(f"ttl_seconds must be between 1 and {self.settings.max_ttl_seconds}")
        init = state if state is not None else {k: v[0] for k, v in engine.initial_state(1).items()}
        session = Session(
            session_id=session_id or new_session_id(),
            model=engine.name,
            version=engine.version,
            ttl_seconds=ttl,
            state=init,
            offset=offset or 0,
            created_at=now(),
        )
        async with self._store_op("create"):
            if not if_absent:
                return await self.store.create(session)
            s, created = await self.store.create_if_absent(session)
        if not created:
            raise SessionExists(s)
        return s

    async def get_session(self, session_id: str) -> Session:
        """A snapshot (extends the session's life)."""
        async with self._store_op("get"):
            return await self.store.get(session_id)

    async def step(
        self,
        session_id: str,
        x: np.ndarray,
        offset: int | None = None,
        internals: bool = False,
    ) -> StepResult:
        """Apply one chunk [T, I] to a session, exactly once, serialised with other calls."""
        if x.ndim != 2 or x.shape[0] == 0:
            raise InvalidInput("a chunk needs at least one time step")
        if x.shape[0] > self.settings.max_steps:
            raise PayloadTooLarge(
                f"{x.shape[0]} time steps; the limit is {self.settings.max_steps}"
            )
        return await self._change(session_id, "step", self._stepper(lambda _: x, offset, internals))

    async def step_parsed(
        self,
        session_id: str,
        parse: Callable[[Engine], np.ndarray],
        offset: int | None = None,
        internals: bool = False,
    ) -> StepResult:
        """As `step`, with the chunk still in its wire form: `parse(engine)` turns it into [T, I].

        A protocol whose body does not say the input size (/v1 JSON) checks the chunk once the
        session's model is known, inside the one store access, instead of reading the session
        twice. Errors come in the same order: unknown session (404), version gone (410) or not
        held here (503), malformed chunk (parse's own 422/413), missing internals, offset.
        """
        return await self._change(session_id, "step", self._stepper(parse, offset, internals))

    def _stepper(
        self, chunk: Callable[[Engine], np.ndarray], offset: int | None, internals: bool
    ) -> Callable[[Session], Awaitable[StepResult]]:
        """The change a step makes to its session (run by `_change`, under the store's lock)."""

        async def apply(s: Session) -> StepResult:
            engine = self.pinned(s)
            x = chunk(engine)
            digest = inputs_digest(x)
            self._check_internals(engine, internals)
            if offset is not None and offset != s.offset:
                if (
                    offset == s.last_offset
                    and digest == s.last_digest
                    and s.last_outputs is not None
                ):
                    if internals and s.last_internals is None:
                        raise OffsetConflict(
                            s.offset, "this retry asks for internals the original call did not"
                        )
                    return StepResult(
                        s, s.last_outputs, s.last_internals if internals else None, True
                    )
                raise OffsetConflict(s.offset)
            at, n = s.offset, x.shape[0]
            if at + n > MAX_OFFSET:
                raise InvalidInput(f"this chunk would take the offset past {MAX_OFFSET}")
            r = await self.infer(engine, x[None], batch_state(s.state), None, internals)
            ints = internals_of(r.internals, 0, n) if r.internals else None
            y = np.ascontiguousarray(r.y[0])
            s.last_offset, s.last_digest, s.last_outputs, s.last_internals = at, digest, y, ints
            s.state = {k: np.ascontiguousarray(v[0]) for k, v in r.states.items()}
            s.offset = at + n
            return StepResult(s, y, ints)

        return apply

    async def reset_session(self, session_id: str) -> Session:
        """Back to offset 0 and the initial state."""

        async def apply(s: Session) -> Session:
            engine = self.pinned(s)
            s.state = {k: v[0] for k, v in engine.initial_state(1).items()}
            s.offset = 0
            s.forget_last_chunk()
            return s

        return await self._change(session_id, "reset", apply)

    async def migrate_session(self, session_id: str, version: int) -> Session:
        """Pin a session to another ready version of its model, state and offset kept.

        Only between versions whose state tensors have the same names and shapes (else 409):
        the state then means the same to the new weights' equations, so a rolling update can
        carry a live stream over. Works on a session whose version is gone (410) too.
        """

        async def apply(s: Session) -> Session:
            engine = self.model(s.model, version)
            have = {k: tuple(v.shape) for k, v in s.state.items()}
            want = {spec.name: tuple(spec.shape) for spec in engine.state_specs}
            if have != want:
                raise StateLayoutConflict(
                    f"session {session_id!r} holds state {have}; model {s.model!r} version "
                    f"{version} needs {want}: a session moves only between versions whose "
                    "state layouts match"
                )
            s.version = engine.version
            return s

        return await self._change(session_id, "migrate", apply)

    async def delete_session(self, session_id: str) -> None:
        async with self._store_op("delete"):
            await self.store.delete(session_id)

    async def live_sessions(self) -> int:
        async with self._store_op("count"):
            return await self.store.count()

    # -- readiness -----------------------------------------------------------------------

    async def ready(self) -> tuple[bool, str]:
        """Every accepted model loaded and the store answering."""
        try:
            async with self._store_op("ping"):
                await self.store.ping()
        except StoreUnavailable as e:  # the store's own words, prefixed once
            why = e.detail
            return False, why if why.startswith(
                "session store"
            ) else f"session store unreachable: {why}"
        return True, f"{len(self.registry)} model versions loaded"
