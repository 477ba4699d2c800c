"""The export check: does ONNX Runtime compute what the trained PyTorch module computes?

Float32 rounding is not a lowering bug, so the check does not ask ONNX Runtime to match a
float32 run to some fixed tolerance: over 1,000 steps a float32 network drifts from exact
arithmetic by amounts that depend on the network and the input (1e-6 for one network,
3e-4 for another that integrates its input without forgetting). Instead both float32
implementations are measured against the same module in float64, on the same inputs:

    ort_error = max |ORT     - float64| / max(1, |float64|)     (per graph output, per case)
    f32_error = max |PyTorch - float64| / max(1, |float64|)     (PyTorch in float32)
    accepted when  ort_error <= factor * f32_error + floor      (default 100 and 1e-5)

ONNX Runtime and PyTorch round differently (different kernels and summation orders; ORT's
LSTM operator approximates sigmoid and tanh), so their errors differ by a factor: measured on
30 random networks of every topology over 1,000 steps, ORT's error was up to 29x PyTorch's
own, typically 3-10x (docs/TRAINING.md, "The export check"). The factor of 100 leaves room
above that. A lowering bug (a swapped gate, a wrong peephole, a lost normalisation) is not
rounding: it shows from the first step, where both float32 runs are within ~1e-7 of exact,
and errs by 1e-3 or more, 100x above the floor of 1e-5 (tests inject such bugs).

The inputs are those the model will meet: the task's own data (its validation split, the
whole streams of a stateful task), and random inputs drawn uniformly in the range of the
training inputs, in batches of 1 and 5, at lengths 1, 7 and the task's length (at most
1,000), from the zero state and from a random one. Errors are absolute for values up to 1
and relative beyond, so that raw-unit outputs and unbounded cell states are judged fairly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from app.inference.card import Normalization, state_layout
from training.model import PeepholeLSTM, single_thread

if TYPE_CHECKING:  # annotations only
    from training.tasks.base import TaskData

CHECK_BATCHES = (1, 5)
SHORT_LENGTHS = (1, 7)
MAX_RANDOM_LENGTH = 1000
MAX_DATA_SEQUENCES = 16
SEED = 20020115


@dataclass(frozen=True)
class CheckRule:
    """Accept when ONNX Runtime's error is at most `factor` x the float32 module's own
    error + `floor` (both against float64), for every output of every case."""

    factor: float = 100.0
    floor: float = 1e-5

    def allowed(self, float32_error: float) -> float:
        return self.factor * float32_error + self.floor

    def describe(self) -> str:
        return (
            f"accepted when, for every graph output and every input case, ONNX Runtime's "
            f"error <= {self.factor:g} x the float32 PyTorch module's own error + "
            f"{self.floor:g}; errors are max |value - float64| / max(1, |float64|) against "
            f"the same module run in float64 on the same inputs"
        )


@dataclass
class CheckInputs:
    """What the check runs on, in raw units: task-like batches (run from the zero state)
    and the range random inputs are drawn from."""

    data: list[np.ndarray]  # each [B, T, input_size]
    low: np.ndarray  # [input_size]
    high: np.ndarray
    length: int  # the longest random case
    label: str = "validation data"

    @classmethod
    def random_only(
        cls, input_size: int, norm: Normalization | None = None, length: int = MAX_RANDOM_LENGTH
    ) -> CheckInputs:
        """No data at hand: mean +- 3 std of the normalisation (or -3..3)."""
        mean = np.array(norm.input_mean if norm else [0.0] * input_size)
        std = np.array(norm.input_std if norm else [1.0] * input_size)
        return cls(data=[], low=mean - 3 * std, high=mean + 3 * std, length=length)

    def describe(self) -> list[str]:
        out = [f"{self.label}: {x.shape[0]} x {x.shape[1]} steps, zero state" for x in self.data]
        lengths = sorted({*SHORT_LENGTHS, self.length})
        out.append(
            f"random, uniform in the training range per input "
            f"(low {_short(self.low)}, high {_short(self.high)}): batches "
            f"{list(CHECK_BATCHES)}, lengths {lengths}, zero and random state"
        )
        return out


def check_inputs_from_data(data: TaskData) -> CheckInputs:
    """The task's validation inputs and its training range, back in raw units."""
    norm = data.normalization

    def raw(x: np.ndarray) -> np.ndarray:
        if not norm:
            return x.astype(np.float64)
        return x * np.asarray(norm["input_std"]) + np.asarray(norm["input_mean"])

    train = raw(data.train.x)
    val = raw(data.val.x[:MAX_DATA_SEQUENCES]).astype(np.float32)
    length = min(MAX_RANDOM_LENGTH, max(data.train.x.shape[1], data.val.x.shape[1]))
    return CheckInputs(
        data=[val], low=train.min(axis=(0, 1)), high=train.max(axis=(0, 1)), length=length
    )


def _short(v: np.ndarray) -> list[float]:
    return [float(f"{a:.4g}") for a in np.asarray(v)]


# ------------------------------------------------------------------ cases
def cases(model: PeepholeLSTM, inputs: CheckInputs) -> Iterator[tuple[str, dict]]:
    """Feeds (raw-unit x and the state inputs) of every checked case, deterministic."""
    layout = state_layout(model.config.to_architecture())
    gen = np.random.default_rng(SEED)

    def state(batch: int, random: bool) -> dict[str, np.ndarray]:
        out = {}
        for st in layout:
            shape = (batch, *st.shape)
            if not random:
                v = np.zeros(shape)
            elif st.name == "gates":
                v = gen.uniform(0.0, 1.0, shape)
            else:
                v = gen.uniform(-1.0, 1.0, shape)
            out[st.input] = v.astype(np.float32)
        return out

    for x in inputs.data:
        yield (
            f"{inputs.label} {x.shape[0]}x{x.shape[1]} zero state",
            {"x": np.ascontiguousarray(x, np.float32), **state(len(x), False)},
        )
    low, high = np.asarray(inputs.low, np.float64), np.asarray(inputs.high, np.float64)
    for batch in CHECK_BATCHES:
        for steps in sorted({*SHORT_LENGTHS, inputs.length}):
            x = low + (high - low) * gen.uniform(0.0, 1.0, (batch, steps, len(low)))
            for start in ("zero", "random"):
                yield (
                    f"random batch={batch} T={steps} state={start}",
                    {"x": x.astype(np.float32), **state(batch, start == "random")},
                )


def reference(model: PeepholeLSTM, feeds: dict, norm: Normalization | None) -> dict:
    """The module (in its own dtype) on raw-unit feeds, outputs named like the graph's:
    the normalisation, de-normalisation and residual of the graph done in torch."""
    dtype = next(model.parameters()).dtype
    x_raw = torch.from_numpy(feeds["x"]).to(dtype)
    x = x_raw
    if norm is not None:
        mean, std = (torch.tensor(v, dtype=dtype) for v in (norm.input_mean, norm.input_std))
        x = (x - mean) / std
    state = {
        st.name: torch.from_numpy(feeds[st.input]).to(dtype)
        for st in state_layout(model.config.to_architecture())
    }
    with torch.no_grad(), single_thread():
        y, final, internals = model(x, state, return_internals=True)
    if norm is not None and norm.target_mean is not None:
        mean, std = (torch.tensor(v, dtype=dtype) for v in (norm.target_mean, norm.target_std))
        y = y * std + mean
    if norm is not None and norm.target_offset_input is not None:
        y = y + x_raw[..., norm.target_offset_input]
    out = {"y": y, **{f"{k}_out": v for k, v in final.items()}, **internals}
    return {k: v.numpy() for k, v in out.items()}


def error(actual: np.ndarray, exact: np.ndarray) -> float:
    """max |actual - exact| / max(1, |exact|); inf for a shape mismatch or a NaN."""
    if actual.shape != exact.shape:
        return float("inf")
    if not actual.size:
        return 0.0
    err = np.abs(actual.astype(np.float64) - exact) / np.maximum(1.0, np.abs(exact))
    return float(np.nan_to_num(err.max(), nan=np.inf))


# ------------------------------------------------------------------ the check
@dataclass
class Finding:
    graph: str
    output: str
    case: str
    ort_error: float
    float32_error: float
    allowed: float

    @property
    def share(self) -> float:
        """ort_error / allowed: at most 1 is accepted."""
        if self.allowed > 0:
            return self.ort_error / self.allowed
        return 0.0 if self.ort_error == 0 else float("inf")


@dataclass
class Report:
    rule: CheckRule
    cases: list[str]
    max_error: dict[str, dict[str, float]] = field(default_factory=dict)  # ORT vs float64
    float32_error: dict[str, float] = field(default_factory=dict)  # PyTorch f32 vs float64
    worst: Finding | None = None
    failures: list[Finding] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The card's `verification` section."""

        def r(v: float) -> float:
            return float(f"{v:.3g}")

        w = self.worst
        return {
            "rule": self.rule.describe(),
            "reference": "the same PyTorch module in float64",
            "factor": self.rule.factor,
            "floor": self.rule.floor,
            "cases": self.cases,
            "max_error": {g: {n: r(e) for n, e in v.items()} for g, v in self.max_error.items()},
            "float32_module_error": {n: r(e) for n, e in self.float32_error.items()},
            "worst": None
            if w is None
            else {
                "graph": w.graph,
                "output": w.output,
                "case": w.case,
                "ort_error": r(w.ort_error),
                "float32_error": r(w.float32_error),
                "allowed": r(w.allowed),
                "share_of_allowed": r(w.share),
            },
        }


class ExportMismatch(Exception):
    """ONNX Runtime is clearly worse than float32 rounding explains; nothing was written."""

    def __init__(self, report: Report | str) -> None:
        self.checkpoint: Path | None = None  # set by `train`: where the trained model is kept
        if isinstance(report, str):  # a caller with its own check (training/lnsc/export.py)
            self.report = None
            super().__init__(report)
            return
        self.report = report
        w = max(report.failures, key=lambda f: f.share)
        super().__init__(
            f"ONNX Runtime's {w.graph} graph, output {w.output}, is {w.ort_error:.2g} from "
            f"float64 on {w.case}, beyond the allowed {w.allowed:.2g} "
            f"({report.rule.factor:g} x the float32 PyTorch module's own {w.float32_error:.2g}"
            f" + {report.rule.floor:g})"
        )

    @property
    def largest_error(self) -> float:
        if self.report is None:
            return float("nan")
        return max(f.ort_error for f in self.report.failures)


def session(graph: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1  # tiny per-step work: extra threads only wait on each other
    return ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def verify(
    model: PeepholeLSTM,
    graphs: dict[str, onnx.ModelProto],
    normalization: Normalization | None = None,
    rule: CheckRule | None = None,
    inputs: CheckInputs | None = None,
) -> Report:
    """Run every case; raise ExportMismatch if any output breaks the rule."""
    rule = rule or CheckRule()
    inputs = inputs or CheckInputs.random_only(model.config.input_size, normalization)
    f32 = copy.deepcopy(model).cpu().float().eval()
    f64 = copy.deepcopy(model).cpu().double().eval()
    sessions = {k: session(g) for k, g in graphs.items()}
    report = Report(rule=rule, cases=inputs.describe(), max_error={k: {} for k in graphs})
    for case, feeds in cases(model, inputs):
        exact = reference(f64, feeds, normalization)
        own = reference(f32, feeds, normalization)
        own_err = {n: error(v, exact[n]) for n, v in own.items()}
        for n, e in own_err.items():
            report.float32_error[n] = max(report.float32_error.get(n, 0.0), e)
        for kind, sess in sessions.items():
            names = [o.name for o in sess.get_outputs()]
            for name, value in zip(names, sess.run(names, feeds), strict=True):
                e = error(value, exact[name])
                worst = report.max_error[kind]
                worst[name] = max(worst.get(name, 0.0), e)
                f = Finding(kind, name, case, e, own_err[name], rule.allowed(own_err[name]))
                if report.worst is None or not f.share <= report.worst.share:
                    report.worst = f
                if not e <= f.allowed:
                    report.failures.append(f)
    if report.failures:
        raise ExportMismatch(report)
    return report
