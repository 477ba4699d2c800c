"""Export a trained `PeepholeLSTM` to the model repository (CONTRACT.md section 1).

    version_dir = export_model(model, Path("models"), "mackey-glass", task="mackey-glass",
                               training={...}, input_names=["x"], output_names=["x_next"],
                               normalization=Normalization(...))

writes `models/<name>/<version>/` with `model.onnx` (the lean graph: the ONNX LSTM operator
for the plain topology, a Scan otherwise), `model.internals.onnx` (per-step cell states,
cell outputs and gates), `model.cuda.onnx` (plain topology only: plain operators, because
ONNX Runtime's CUDA provider does not run an LSTM node with peepholes) and `model.json`.

Nothing is written unless ONNX Runtime agrees with the PyTorch module: every graph is run
on batches of 1 and 5, lengths 1, 7 and 1000, from the zero state and from a random one,
and compared with the module itself (float32, as trained and as users run it) on every
output. The error measure is |ort - torch| / max(1, |torch|) (absolute for values up to 1,
relative beyond, so that raw-unit outputs and unbounded cell states are judged fairly).
Why not a float64 reference: over 1000 steps of random input a trained network's float32
rounding alone drifts ~2e-5 from float64 (measured on a trained embedded-Reber network), so a
1e-5 check against float64 would refuse correct exports; float32 ORT vs float32 PyTorch
stays below 1e-5 there, while a lowering bug shows as errors of 1e-3 and more.

The module is trained in normalised units; the graph takes and returns raw units: with
`normalization`, x_norm = (x - input_mean) / input_std feeds the network, and a linear
output is mapped back with y * target_std + target_mean.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from app.inference.card import (
    NAME_PATTERN,
    GraphFile,
    ModelCard,
    Normalization,
    OnnxInfo,
    TrainingInfo,
    state_layout,
)
from training.model import PeepholeLSTM, single_thread
from training.onnx_graphs import OPSET, lstm_graph, scan_graph

GRAPH_FILES = {
    "model": "model.onnx",
    "internals": "model.internals.onnx",
    "cuda": "model.cuda.onnx",
}
CHECK_BATCHES = (1, 5)
CHECK_LENGTHS = (1, 7, 1000)


class ExportMismatch(Exception):
    """ONNX Runtime and the PyTorch module disagree beyond the tolerance; nothing was written."""


# ------------------------------------------------------------------ graphs
def build_graphs(
    model: PeepholeLSTM,
    normalization: Normalization | dict | None = None,
    internals: bool = True,
) -> dict[str, onnx.ModelProto]:
    """{"model", "internals" (if asked), "cuda" (plain topology only)} for this module.

    Builds only; `verify` (or `export_model`, which calls it) checks them against PyTorch.
    """
    normalization = _as_normalization(normalization)
    _check_normalization(model, normalization)
    model = _detached_copy(model)
    plain = model.config.plain
    graphs = {
        "model": lstm_graph(model, normalization) if plain else scan_graph(model, normalization)
    }
    if internals:
        graphs["internals"] = scan_graph(model, normalization, internals=True)
    if plain:
        graphs["cuda"] = scan_graph(model, normalization)
    return graphs


def _as_normalization(norm: Normalization | dict | None) -> Normalization | None:
    return Normalization(**norm) if isinstance(norm, dict) else norm


def _detached_copy(model: PeepholeLSTM) -> PeepholeLSTM:
    """A CPU, eval-mode copy, so that exporting never moves or re-modes the caller's module."""
    return copy.deepcopy(model).cpu().eval()


def _check_normalization(model: PeepholeLSTM, norm: Normalization | None) -> None:
    if norm is None:
        return
    c = model.config
    if len(norm.input_mean) != c.input_size or len(norm.input_std) != c.input_size:
        raise ValueError("input normalisation needs input_size means and stds")
    if min(norm.input_std) <= 0:
        raise ValueError("input_std must be positive")
    has_target = norm.target_mean is not None or norm.target_std is not None
    if not has_target:
        return
    if c.output_activation != "linear":
        raise ValueError("target normalisation applies only to a linear output")
    if norm.target_mean is None or norm.target_std is None:
        raise ValueError("target_mean and target_std go together")
    if len(norm.target_mean) != c.output_size or len(norm.target_std) != c.output_size:
        raise ValueError("target normalisation needs output_size means and stds")


# ------------------------------------------------------------------ verification
def _cases(model: PeepholeLSTM, norm: Normalization | None) -> Iterable[tuple[str, dict]]:
    """Raw-unit inputs and states of every checked case (deterministic)."""
    c = model.config
    gen = np.random.default_rng(20020115)
    mean = np.array(norm.input_mean if norm else [0.0] * c.input_size)
    std = np.array(norm.input_std if norm else [1.0] * c.input_size)
    for batch in CHECK_BATCHES:
        for steps in CHECK_LENGTHS:
            x = (mean + std * gen.standard_normal((batch, steps, c.input_size))).astype(np.float32)
            for start in ("zero", "random"):
                feeds = {"x": x}
                for st in state_layout(c.to_architecture()):
                    shape = (batch, *st.shape)
                    if start == "zero":
                        value = np.zeros(shape)
                    elif st.name == "gates":
                        value = gen.uniform(0.0, 1.0, shape)
                    else:
                        value = gen.uniform(-1.0, 1.0, shape)
                    feeds[st.input] = value.astype(np.float32)
                yield f"batch={batch} T={steps} state={start}", feeds


def _torch_reference(model: PeepholeLSTM, feeds: dict, norm: Normalization | None) -> dict:
    """The module on the raw-unit feeds (in its own dtype), named like the graph outputs."""
    dtype = next(model.parameters()).dtype
    x = torch.from_numpy(feeds["x"]).to(dtype)
    if norm is not None:
        mean, std = (torch.tensor(v, dtype=x.dtype) for v in (norm.input_mean, norm.input_std))
        x = (x - mean) / std
    state = {
        st.name: torch.from_numpy(feeds[st.input]).to(dtype)
        for st in state_layout(model.config.to_architecture())
    }
    with torch.no_grad(), single_thread():
        y, final, internals = model(x, state, return_internals=True)
    if norm is not None and norm.target_mean is not None:
        mean, std = (torch.tensor(v, dtype=y.dtype) for v in (norm.target_mean, norm.target_std))
        y = y * std + mean
    out = {"y": y, **{f"{k}_out": v for k, v in final.items()}, **internals}
    return {k: v.numpy() for k, v in out.items()}


def _error(actual: np.ndarray, expected: np.ndarray) -> float:
    if actual.shape != expected.shape:
        return float("inf")
    err = np.abs(actual.astype(np.float64) - expected) / np.maximum(1.0, np.abs(expected))
    return float(np.nan_to_num(err.max(), nan=np.inf)) if err.size else 0.0


def verify(
    model: PeepholeLSTM,
    graphs: dict[str, onnx.ModelProto],
    normalization: Normalization | None = None,
    tolerance: float = 1e-5,
) -> dict[str, dict[str, float]]:
    """Max error per graph and output over all cases; raises ExportMismatch above tolerance."""
    normalization = _as_normalization(normalization)
    reference = _detached_copy(model).float()
    sessions = {k: _session(g) for k, g in graphs.items()}
    worst: dict[str, dict[str, float]] = {k: {} for k in graphs}
    failures = []
    for case, feeds in _cases(model, normalization):
        expected = _torch_reference(reference, feeds, normalization)
        for kind, sess in sessions.items():
            names = [o.name for o in sess.get_outputs()]
            for name, value in zip(names, sess.run(None, feeds), strict=True):
                err = _error(value, expected[name])
                worst[kind][name] = max(worst[kind].get(name, 0.0), err)
                if not err <= tolerance:
                    failures.append(f"{kind}:{name} {case}: error {err:.3g}")
    if failures:
        raise ExportMismatch(
            f"ONNX Runtime differs from PyTorch beyond {tolerance:g}: " + "; ".join(failures[:8])
        )
    return worst


def _session(graph: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1  # tiny per-step work: extra threads only wait on each other
    return ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------ writing
def next_version(repo: Path, name: str) -> int:
    """One above the highest integer version directory under repo/name (1 if none)."""
    versions = [int(p.name) for p in (repo / name).glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export_model(
    model: PeepholeLSTM,
    repo: Path,
    name: str,
    *,
    task: str,
    training: dict,
    input_names: list[str],
    output_names: list[str],
    normalization: Normalization | dict | None = None,
    encoding: dict | None = None,
    description: str = "",
    version: int | None = None,
    internals: bool = True,
    tolerance: float = 1e-5,
) -> Path:
    """Build, verify against PyTorch, then write the version directory; returns it."""
    if not re.match(NAME_PATTERN, name):
        raise ValueError(f"invalid model name {name!r}")
    normalization = _as_normalization(normalization)
    repo = Path(repo)
    model = _detached_copy(model)
    graphs = build_graphs(model, normalization, internals=internals)
    errors = verify(model, graphs, normalization, tolerance)
    blobs = {kind: g.SerializeToString() for kind, g in graphs.items()}
    version = next_version(repo, name) if version is None else version
    card = _card(
        model,
        name,
        version,
        task,
        training,
        input_names,
        output_names,
        normalization,
        encoding,
        description,
        blobs,
        errors,
        tolerance,
    )
    return _write(repo / name, version, blobs, card)


def _card(
    model: PeepholeLSTM,
    name: str,
    version: int,
    task: str,
    training: dict,
    input_names: list[str],
    output_names: list[str],
    normalization: Normalization | None,
    encoding: dict | None,
    description: str,
    blobs: dict[str, bytes],
    errors: dict[str, dict[str, float]],
    tolerance: float,
) -> ModelCard:
    def digest(kind: str) -> str:
        return hashlib.sha256(blobs[kind]).hexdigest()

    def extra(kind: str) -> GraphFile | None:
        return GraphFile(file=GRAPH_FILES[kind], sha256=digest(kind)) if kind in blobs else None

    arch = model.config.to_architecture()
    onnx_info = OnnxInfo(
        opset=OPSET,
        sha256=digest("model"),
        lowering="lstm" if arch.plain else "scan",
        internals=extra("internals"),
        cuda=extra("cuda"),
    )
    return ModelCard(
        name=name,
        version=version,
        task=task,
        description=description,
        input_size=arch.input_size,
        output_size=arch.output_size,
        input_names=input_names,
        output_names=output_names,
        output_activation=arch.output_activation,
        architecture=arch,
        state=state_layout(arch),
        normalization=normalization,
        encoding=encoding,
        training=TrainingInfo(**{"task": task, **training}),
        onnx=onnx_info,
        verification=_verification_summary(errors, tolerance),
    )


def _verification_summary(errors: dict[str, dict[str, float]], tolerance: float) -> dict[str, Any]:
    return {
        "reference": "PyTorch module in float32",
        "measure": "max |ort - torch| / max(1, |torch|)",
        "batches": list(CHECK_BATCHES),
        "lengths": list(CHECK_LENGTHS),
        "states": ["zero", "random"],
        "tolerance": tolerance,
        "max_error": {k: {n: float(f"{e:.3g}") for n, e in v.items()} for k, v in errors.items()},
    }


def _write(model_dir: Path, version: int, blobs: dict[str, bytes], card: ModelCard) -> Path:
    """Write into a temporary directory, then rename: a version appears whole or not at all."""
    target = model_dir / str(version)
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=model_dir))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
        for kind, blob in blobs.items():
            (tmp / GRAPH_FILES[kind]).write_bytes(blob)
        (tmp / "model.json").write_text(card.model_dump_json(indent=2) + "\n")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
