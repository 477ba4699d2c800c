"""One ONNX Runtime session per model version, and exact runs of ragged batches.

The graph has no sequence-length input, so a ragged batch is run by segments (DESIGN.md):
with distinct lengths l1 < l2 < ..., steps [0, l1) run for every sequence, then [l1, l2)
for those still going, from their states, and so on. Each sequence's outputs and final state
are exactly those of the sequence alone; nothing is padded through the network.

`Engine.run` is synchronous and thread-safe (ONNX Runtime sessions are); a `Runner`
(app/inference/batcher.py) calls it, coalescing concurrent requests into one run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from app.inference.card import ModelCard
from app.inference.repository import ModelVersion

log = logging.getLogger("peephole.engine")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
INTERNALS = ("cell_states", "cell_outputs", "gates")
# Batch x time steps per ONNX Runtime call. ONNX Runtime's working memory grows with both
# (the LSTM kernel keeps every step's gates); a longer run goes in time segments, carrying the
# state, and gives its memory back after each one (arena shrinkage). Runs below stay one call.
RUN_BATCH_STEPS = 16384
_SHRINK = ort.RunOptions()
_SHRINK.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


class EngineError(Exception):
    """A model version cannot be served (bad graph, or the provider asked for is unusable)."""


class ProviderUnavailable(EngineError):
    """PEEPHOLE_PROVIDER=cuda but CUDA cannot run this model: the server must not start."""


@dataclass
class EngineResult:
    """Outputs of one run; time is padded to the longest sequence (zeros past each length)."""

    y: np.ndarray  # [B, T, output_size]
    states: dict[str, np.ndarray]  # name -> [B, *shape], after each sequence's own last step
    internals: dict[str, np.ndarray] | None = (
        None  # cell_states/cell_outputs [B,T,cells], gates [B,T,blocks,3]
    )
    finite: bool = False  # True: y and states are known finite (checked once for a whole batch)


def thread_plan(cores: int, workers: int = 0, intra: int = 0) -> tuple[int, int]:
    """(worker threads, ONNX Runtime intra-op threads per run) for this many cores.

    A peephole LSTM is sequential in time, so extra intra-op threads help only wide batches;
    concurrency across requests pays more. Small boxes: one worker per core, one thread each.
    """
    if not workers:
        workers = cores if cores <= 2 else max(2, cores // 2)
    if not intra:
        intra = max(1, cores // workers)
    return workers, intra


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn shared cores between requests; latency cost is small here.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def cuda_available() -> bool:
    return CUDA in ort.get_available_providers()


class Engine:
    """The runnable form of one model version."""

    def __init__(self, mv: ModelVersion, provider: str = "auto", intra_op_threads: int = 1) -> None:
        self.name = mv.name
        self.version = mv.version
        self.card: ModelCard = mv.card
        self.identity = mv.identity  # which files (app/inference/repository.py ModelVersion)
        self.state_specs = list(mv.card.state)
        self.input_size = mv.card.input_size
        self.output_size = mv.card.output_size
        self._so = _session_options(intra_op_threads)
        self._lean_outputs = ["y", *(s.output for s in self.state_specs)]
        self.provider, self._session = self._open_lean(mv, provider)
        self._internals = None
        if mv.internals_graph is not None:
            # Internals are a debugging/plotting path: keep them on the CPU, off the hot path.
            self._internals = self._open(mv.internals_graph, [CPU])
            self._check_io(self._internals, internals=True)
        log.info(
            "model %s/%s loaded on %s (%s lowering%s)",
            self.name,
            self.version,
            self.provider,
            mv.card.onnx.lowering,
            ", internals graph" if self._internals else "",
        )

    # -- loading -------------------------------------------------------------------------

    def _open(self, path: Path, providers: list[str]) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(path), sess_options=self._so, providers=providers)
        except Exception as e:  # ORT raises several unrelated types for bad graphs
            raise EngineError(f"ONNX Runtime cannot load {path.name}: {e}") from e

    def _open_lean(self, mv: ModelVersion, choice: str) -> tuple[str, ort.InferenceSession]:
        """The hot-path session on the provider asked for; `auto` falls back to the CPU."""
        if choice in ("auto", "cuda"):
            why = "CUDAExecutionProvider is not available in this ONNX Runtime build"
            if cuda_available():
                graph = mv.cuda_graph or mv.graph
                try:
                    sess = self._open(graph, [CUDA, CPU])
                    if sess.get_providers()[0] != CUDA:
                        raise EngineError("ONNX Runtime did not enable CUDA for this graph")
                    self._check_io(sess)
                    self._smoke(sess)
                    return CUDA, sess
                except EngineError as e:
                    why = str(e)
            if choice == "cuda":
                raise ProviderUnavailable(f"model {mv.name}/{mv.version}: CUDA unusable: {why}")
            log.info("model %s/%s: CUDA not used (%s)", mv.name, mv.version, why)
        sess = self._open(mv.graph, [CPU])
        self._check_io(sess)
        self._smoke(sess)
        return CPU, sess

    def _check_io(self, sess: ort.InferenceSession, internals: bool = False) -> None:
        """The graph must speak the card's interface (DESIGN.md), or the version is refused."""
        ins = {i.name for i in sess.get_inputs()}
        outs = {o.name for o in sess.get_outputs()}
        need_in = {"x", *(s.input for s in self.state_specs)}
        need_out = {"y", *(s.output for s in self.state_specs)}
        if internals:
            need_out |= set(INTERNALS)
        if not need_in <= ins or not need_out <= outs:
            raise EngineError(
                f"graph interface mismatch: needs inputs {sorted(need_in)} and outputs "
                f"{sorted(need_out)}, has {sorted(ins)} and {sorted(outs)}"
            )
        if ins - need_in:
            raise EngineError(
                f"graph has inputs the card does not describe: {sorted(ins - need_in)}"
            )

    def _smoke(self, sess: ort.InferenceSession) -> None:
        """Run two steps once: proves the provider can execute the graph and warms it up."""
        x = np.zeros((1, 2, self.input_size), np.float32)
        try:
            out = self._call(sess, x, self.initial_state(1), ["y"])
        except Exception as e:
            raise EngineError(f"test run failed: {e}") from e
        if out[0].shape != (1, 2, self.output_size):
            raise EngineError(f"y has shape {out[0].shape}, expected (1, 2, {self.output_size})")

    # -- running -------------------------------------------------------------------------

    @property
    def has_internals(self) -> bool:
        return self._internals is not None

    def initial_state(self, batch: int) -> dict[str, np.ndarray]:
        return {s.name: np.zeros((batch, *s.shape), np.float32) for s in self.state_specs}

    def _call(
        self,
        sess: ort.InferenceSession,
        x: np.ndarray,
        states: Mapping[str, np.ndarray],
        extra_outputs: list[str],
    ) -> list[np.ndarray]:
        feeds = {"x": np.ascontiguousarray(x, np.float32)}
        for s in self.state_specs:
            feeds[s.input] = np.ascontiguousarray(states[s.name], np.float32)
        names = self._lean_outputs if not extra_outputs else [*self._lean_outputs, *extra_outputs]
        # Plain `run` with numpy feeds: inputs are wrapped without a copy, and on the CPU it
        # measured cheaper than IO binding or prebuilt OrtValues for these small runs.
        big = x.shape[0] * x.shape[1] > RUN_BATCH_STEPS // 2
        outputs: list[np.ndarray] = sess.run(names, feeds, _SHRINK if big else None)
        return outputs

    def run(
        self,
        x: np.ndarray,
        states: Mapping[str, np.ndarray] | None = None,
        lengths: np.ndarray | None = None,
        internals: bool = False,
    ) -> EngineResult:
        """Run `x` [B, T, input_size] from `states` (zeros if None); `lengths` [B] for ragged."""
        B, T, _ = x.shape
        states = states if states is not None else self.initial_state(B)
        sess = self._session
        extra: list[str] = []
        if internals:
            if self._internals is None:
                raise EngineError("this model has no internals graph")
            sess, extra = self._internals, list(INTERNALS)
        n_state = len(self.state_specs)
        span = max(1, RUN_BATCH_STEPS // B)  # time steps per call
        if (lengths is None or bool(np.all(lengths == T))) and span >= T:
            out = self._call(sess, x, states, extra)
            new = {s.name: out[1 + i] for i, s in enumerate(self.state_specs)}
            ints = dict(zip(INTERNALS, out[1 + n_state :], strict=True)) if internals else None
            return EngineResult(out[0], new, ints)
        if lengths is None:
            lengths = np.full(B, T, np.int64)
        return self._run_segments(sess, x, states, lengths, extra, span)

    def _run_segments(
        self,
        sess: ort.InferenceSession,
        x: np.ndarray,
        states: Mapping[str, np.ndarray],
        lengths: np.ndarray,
        extra: list[str],
        span: int,
    ) -> EngineResult:
        B, T, _ = x.shape
        n_state = len(self.state_specs)
        y = np.zeros((B, T, self.output_size), np.float32)
        cur = {k: np.array(v, np.float32, copy=True) for k, v in states.items()}
        ints: dict[str, np.ndarray] | None = None
        start = 0
        # segments end where a sequence ends, and at least every `span` steps
        for end in np.union1d(np.unique(lengths), np.arange(span, T, span)):
            end = int(end)
            active = np.nonzero(lengths >= end)[0]  # still running through [start, end)
            everyone = len(active) == B
            xs = x[:, start:end] if everyone else x[active, start:end]
            st = cur if everyone else {k: v[active] for k, v in cur.items()}
            out = self._call(sess, xs, st, extra)
            y[active, start:end] = out[0]
            for i, s in enumerate(self.state_specs):
                cur[s.name][active] = out[1 + i]
            for name, arr in zip(extra, out[1 + n_state :], strict=True):
                if ints is None:
                    ints = {}
                if name not in ints:
                    ints[name] = np.zeros((B, T, *arr.shape[2:]), np.float32)
                ints[name][active, start:end] = arr
            start = end
        return EngineResult(y, cur, ints)


class Runner(Protocol):
    """Runs an engine off the event loop. A dynamic batcher implements the same call."""

    async def __call__(
        self,
        engine: Engine,
        x: np.ndarray,
        states: Mapping[str, np.ndarray] | None,
        lengths: np.ndarray | None,
        internals: bool = False,
    ) -> EngineResult: ...


Observer = Callable[[Engine, int, float], None]  # (engine, batch size, seconds)
