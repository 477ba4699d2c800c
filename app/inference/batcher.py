"""Dynamic batching across requests and sessions: one ONNX Runtime run for many callers.

`BatchingRunner` implements the `Runner` protocol (app/inference/engine.py), so the data plane
does not know it is there. Concurrent calls for one engine (one model version) are queued and
run as ONE batch: inputs concatenated along batch (zero-padded in time), start states
concatenated, per-sequence lengths passed on, so the engine's ragged run by segments
(engine.py) gives every caller exactly what it would get alone. Then the outputs and final
states are sliced back per caller.

When does a batch run? Like Triton's dynamic / sequence batchers, but without making a lone
request wait:
- the first call of an event-loop iteration schedules a flush for the end of that iteration,
  so every request parsed in the same iteration (uvicorn reads many sockets per iteration
  under load) lands in the same batch, and a lone request runs at once;
- while a run of this engine is in flight, new calls queue and go together when it ends
  (at most `max_size` sequences per run; the rest in the next run);
- `max_wait_ms` > 0 additionally holds a partial batch up to that long (from its oldest
  call), but only while fewer sequences wait than the previous run had: concurrent clients
  come back together, so the batch is filled again; a lone client (previous run: itself) or
  an idle engine never waits.
States may come as rows of shared arrays (the memory store's tables: a mapping with `arrays`,
name -> [rows, *shape], and `rows`, app/sessions/table.py): when every call of a batch has
its states in the same arrays, the batch's states are one gather by row index per tensor.
Small runs (estimated under `inline_ms` from this engine's measured cost per time step) run
on the event loop itself: for a step of a 32-cell LSTM a thread hand-off costs several times
the run. Larger runs go to the thread pool, which ONNX Runtime (GIL released) shares with
the event loop. Internals are never batched (their graph is the slow debugging path).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from math import isfinite

import numpy as np

from app.inference.engine import Engine, EngineResult, Observer

SMALL_RUN = 64  # sequence-steps under which a run's cost is mostly fixed overhead


@dataclass(slots=True)
class _Call:
    x: np.ndarray  # [B, T, I]
    states: Mapping[str, np.ndarray] | None
    lengths: np.ndarray | None
    future: asyncio.Future[EngineResult]


@dataclass
class _Queue:
    """Per engine: waiting calls and what the scheduler needs to know."""

    calls: list[_Call] = field(default_factory=list)
    scheduled: bool = False
    inflight: int = 0
    since: float = 0.0  # when the oldest waiting call arrived
    last_size: int = 0  # sequences in the last run: the batch that concurrency here gives
    timer: asyncio.TimerHandle | None = None
    forgotten: bool = False  # the engine was unloaded: drop this queue once it is idle
    # Cost model learned from this engine's runs (<0: not measured yet): seconds per small run
    # (overhead-dominated) and seconds per sequence-step of larger runs.
    run_cost: float = -1.0
    unit_cost: float = -1.0

    def estimate(self, units: int) -> float | None:
        """Seconds a run of `units` padded sequence-steps should take; None if unknown."""
        if units < SMALL_RUN:
            return self.run_cost if self.run_cost >= 0 else None
        if self.unit_cost < 0:
            return None
        return max(self.run_cost, 0.0) + self.unit_cost * units

    def learn(self, units: int, seconds: float) -> None:
        if units < SMALL_RUN:
            self.run_cost = seconds if self.run_cost < 0 else 0.8 * self.run_cost + 0.2 * seconds
        else:
            per = seconds / units
            self.unit_cost = per if self.unit_cost < 0 else 0.8 * self.unit_cost + 0.2 * per


def _gather(calls: list[_Call]) -> dict[str, np.ndarray] | None:
    """The batch's states as one gather per tensor, when every call's states are rows of the
    same arrays (see the module doc); None otherwise."""
    first = calls[0].states
    arrays = None if type(first) is dict else getattr(first, "arrays", None)
    if arrays is None:
        return None
    shared: dict[str, np.ndarray] = arrays
    rows: list[int] = []
    for c in calls:
        st = c.states
        if type(st) is dict or getattr(st, "arrays", None) is not shared:
            return None
        rows += st.rows  # type: ignore[union-attr]
    return {name: a[rows] for name, a in shared.items()}


def _merge(engine: Engine, calls: list[_Call]) -> tuple[np.ndarray,
                                                         Mapping[str, np.ndarray] | None,
                                                         np.ndarray | None]:  # fmt: skip
    """One batch from many calls: x zero-padded to the longest, states and lengths concatenated."""
    if len(calls) == 1:
        c = calls[0]
        return c.x, c.states, c.lengths
    T = max(c.x.shape[1] for c in calls)
    B = sum(c.x.shape[0] for c in calls)
    x = np.zeros((B, T, calls[0].x.shape[2]), np.float32)
    lengths = np.empty(B, np.int64)
    off = 0
    for c in calls:
        b, t = c.x.shape[0], c.x.shape[1]
        x[off : off + b, :t] = c.x
        lengths[off : off + b] = t if c.lengths is None else c.lengths
        off += b
    states: dict[str, np.ndarray] | None = None
    if all(c.states is not None for c in calls):
        states = _gather(calls)
    if states is None and any(c.states is not None for c in calls):
        states = engine.initial_state(B)
        off = 0
        for c in calls:
            b = c.x.shape[0]
            if c.states is not None:
                for name, arr in c.states.items():
                    states[name][off : off + b] = arr
            off += b
    return x, states, (None if bool(np.all(lengths == T)) else lengths)


def _split(result: EngineResult, calls: list[_Call]) -> None:
    """Each caller's slice of the batch (contiguous, as an unbatched run would return)."""
    if len(calls) == 1:
        if not calls[0].future.done():
            calls[0].future.set_result(result)
        return
    # One finiteness check for the batch (float64 sums: finite iff every entry is); when it
    # fails, each caller's slice is checked on its own by the data plane.
    finite = isfinite(result.y.sum(dtype=np.float64)) and all(
        isfinite(v.sum(dtype=np.float64)) for v in result.states.values()
    )
    # Contiguous once for the batch: then a caller's rows are a contiguous view, no copy.
    ys = np.ascontiguousarray(result.y)
    T = ys.shape[1]
    states = [(k, np.ascontiguousarray(v)) for k, v in result.states.items()]
    off = 0
    for c in calls:
        b, t = c.x.shape[0], c.x.shape[1]
        if not c.future.done():  # a caller may have been cancelled (client gone)
            end = off + b
            y = ys[off:end] if t == T else np.ascontiguousarray(ys[off:end, :t])
            st = {k: v[off:end] for k, v in states}
            c.future.set_result(EngineResult(y, st, None, finite))
        off += b


def _fail(calls: list[_Call], exc: BaseException) -> None:
    for c in calls:
        if not c.future.done():
            c.future.set_exception(exc)


class BatchingRunner:
    """A `Runner` that coalesces concurrent calls per engine into one run (see module doc)."""

    def __init__(
        self,
        workers: int,
        observe: Observer | None = None,
        *,
        max_size: int = 64,
        max_wait_ms: float = 0.0,
        inline_ms: float = 0.5,
    ) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="peephole-infer")
        self._observe = observe
        self.max_size = max(1, max_size)
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.inline = max(0.0, inline_ms) / 1000.0
        self._queues: dict[int, _Queue] = {}

    # -- the Runner call -------------------------------------------------------------------

    async def __call__(
        self,
        engine: Engine,
        x: np.ndarray,
        states: Mapping[str, np.ndarray] | None,
        lengths: np.ndarray | None,
        internals: bool = False,
    ) -> EngineResult:
        loop = asyncio.get_running_loop()
        if internals:
            return await loop.run_in_executor(
                self._pool, self._timed, engine, x, states, lengths, True
            )
        q = self._queues.get(id(engine))
        if q is None:
            q = self._queues[id(engine)] = _Queue()
        future: asyncio.Future[EngineResult] = loop.create_future()
        if not q.calls:
            q.since = time.perf_counter()
        q.calls.append(_Call(x, states, lengths, future))
        if not q.scheduled and not q.inflight:
            q.scheduled = True
            loop.call_soon(self._flush, engine, q)
        return await future

    def forget(self, engine: Engine) -> None:
        """The engine was unloaded: drop its queue (and cost model) once the calls already
        queued on it have run; they run on the engine they hold, never fail for this."""
        q = self._queues.get(id(engine))
        if q is None:
            return
        q.forgotten = True
        self._drop_if_idle(engine, q)

    def _drop_if_idle(self, engine: Engine, q: _Queue) -> None:
        if q.forgotten and not q.calls and not q.inflight and not q.scheduled:
            if q.timer is not None:
                q.timer.cancel()
            if self._queues.get(id(engine)) is q:
                del self._queues[id(engine)]

    def close(self) -> None:
        for q in self._queues.values():
            if q.timer is not None:
                q.timer.cancel()
            _fail(q.calls, RuntimeError("the inference runner is shutting down"))
            q.calls.clear()
        self._pool.shutdown(wait=True, cancel_futures=False)

    # -- scheduling --------------------------------------------------------------------------

    def _flush(self, engine: Engine, q: _Queue) -> None:
        """Dispatch what is queued, unless a run is in flight (its end will flush) or, with
        max_wait, fewer sequences wait than the last batch had (more are likely on the way)."""
        q.scheduled = False
        if q.timer is not None:
            q.timer.cancel()
            q.timer = None
        while q.calls and not q.inflight:
            if self.max_wait:
                queued = sum(c.x.shape[0] for c in q.calls)
                wait = q.since + self.max_wait - time.perf_counter()
                if queued < min(self.max_size, q.last_size) and wait > 0:
                    q.timer = asyncio.get_running_loop().call_later(wait, self._flush, engine, q)
                    return
            self._dispatch(engine, q)
            q.since = time.perf_counter()
        self._drop_if_idle(engine, q)

    def _take(self, q: _Queue) -> list[_Call]:
        """The longest prefix of the queue within max_size sequences (at least one call)."""
        n, total = 0, 0
        for c in q.calls:
            b = c.x.shape[0]
            if n and total + b > self.max_size:
                break
            n, total = n + 1, total + b
        calls, q.calls[:n] = q.calls[:n], []
        return [c for c in calls if not c.future.cancelled()]

    def _dispatch(self, engine: Engine, q: _Queue) -> None:
        calls = self._take(q)
        if not calls:
            return
        q.last_size = sum(c.x.shape[0] for c in calls)
        try:
            x, states, lengths = _merge(engine, calls)
        except Exception as e:  # pragma: no cover - shapes were checked by the data plane
            _fail(calls, e)
            return
        est = q.estimate(x.shape[0] * x.shape[1])
        if est is not None and est <= self.inline:
            try:
                result = self._timed(engine, x, states, lengths, False, q)
            except Exception as e:
                _fail(calls, e)
                return
            _split(result, calls)
            return
        q.inflight += 1
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._pool, self._timed, engine, x, states, lengths, False, q)
        done.add_done_callback(lambda f: self._finished(engine, q, calls, f))

    def _finished(self, engine: Engine, q: _Queue, calls: list[_Call],
                  f: asyncio.Future[EngineResult]) -> None:  # fmt: skip
        q.inflight -= 1
        exc = f.exception()
        if exc is not None:
            _fail(calls, exc)
        else:
            _split(f.result(), calls)
        if q.calls and not q.scheduled:
            q.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, engine, q)
        self._drop_if_idle(engine, q)

    def _timed(self, engine: Engine, x: np.ndarray, states: Mapping[str, np.ndarray] | None,
               lengths: np.ndarray | None, internals: bool,
               q: _Queue | None = None) -> EngineResult:  # fmt: skip
        t0 = time.perf_counter()
        result = engine.run(x, states, lengths, internals)
        dt = time.perf_counter() - t0
        if q is not None:
            q.learn(x.shape[0] * x.shape[1], dt)
        if self._observe is not None:
            self._observe(engine, int(x.shape[0]), dt)
        return result
