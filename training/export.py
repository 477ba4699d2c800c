"""Export a trained `PeepholeLSTM` to the model repository (`models/<name>/<version>/`).

    version_dir = export_model(model, Path("models"), "mackey-glass", task="mackey-glass",
                               training={...}, input_names=["x"], output_names=["x_next"],
                               normalization=Normalization(...))

writes `models/<name>/<version>/` with `model.onnx` (the lean graph: the ONNX LSTM operator
for the plain topology, a Scan otherwise), `model.internals.onnx` (per-step cell states,
cell outputs and gates), `model.cuda.onnx` (plain topology only: plain operators, because
ONNX Runtime's CUDA provider does not run an LSTM node with peepholes) and `model.json`.

Nothing is written unless ONNX Runtime computes what the module computes, judged against
float32 rounding (training/verify.py: each float32 implementation against the module in
float64, on the task's own data and on random inputs in the training range).

The module is trained in normalised units; the graph takes and returns raw units: with
`normalization`, x_norm = (x - input_mean) / input_std feeds the network, and a linear
output is mapped back with y * target_std + target_mean (and, with `target_offset_input`,
the named inputs' raw values are added: the network predicted the change from them).
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import onnx

from app.inference.card import (
    NAME_PATTERN,
    GraphFile,
    ModelCard,
    Normalization,
    OnnxInfo,
    TrainingInfo,
    state_layout,
)
from training.model import PeepholeLSTM
from training.onnx_graphs import OPSET, lstm_graph, scan_graph
from training.verify import CheckInputs, CheckRule, ExportMismatch, Report, verify
from training.verify import error as _error  # noqa: F401  (training/lnsc/export.py uses it)

GRAPH_FILES = {
    "model": "model.onnx",
    "internals": "model.internals.onnx",
    "cuda": "model.cuda.onnx",
}
CHECKPOINT_SUFFIX = ".ckpt"  # <repo>/<name>/<version>.ckpt: a kept checkpoint reserves its version
__all__ = ["ExportMismatch", "build_graphs", "export_model", "next_version"]


# ------------------------------------------------------------------ graphs
def build_graphs(
    model: PeepholeLSTM,
    normalization: Normalization | dict | None = None,
    internals: bool = True,
) -> dict[str, onnx.ModelProto]:
    """{"model", "internals" (if asked), "cuda" (plain topology only)} for this module.

    Builds only; `verify.verify` (or `export_model`, which calls it) checks them.
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
    has_target = (
        norm.target_mean is not None
        or norm.target_std is not None
        or norm.target_offset_input is not None
    )
    if not has_target:
        return
    if c.output_activation != "linear":
        raise ValueError("target normalisation applies only to a linear output")
    if norm.target_mean is None or norm.target_std is None:
        raise ValueError("target_mean and target_std go together")
    if len(norm.target_mean) != c.output_size or len(norm.target_std) != c.output_size:
        raise ValueError("target normalisation needs output_size means and stds")
    offset = norm.target_offset_input
    if offset is not None and (
        len(offset) != c.output_size or not all(0 <= i < c.input_size for i in offset)
    ):
        raise ValueError("target_offset_input needs one input index per output")


# ------------------------------------------------------------------ writing
def next_version(repo: Path, name: str) -> int:
    """One above the highest version under repo/name (1 if none): version directories, and
    the `<version>.ckpt` checkpoints of runs whose export was refused (their number stays
    reserved for `python -m training export`)."""
    taken = []
    for p in Path(repo, name).glob("*"):
        if p.is_dir() and p.name.isdigit():
            taken.append(int(p.name))
        elif p.is_file() and p.name.endswith(CHECKPOINT_SUFFIX) and p.stem.isdigit():
            taken.append(int(p.stem))
    return max(taken, default=0) + 1


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
    tolerance: float | None = None,
    rule: CheckRule | None = None,
    check_inputs: CheckInputs | None = None,
) -> Path:
    """Build, check against the module (training/verify.py), then write the version
    directory; returns it. `tolerance` is the rule's floor (kept for old callers)."""
    if not re.match(NAME_PATTERN, name):
        raise ValueError(f"invalid model name {name!r}")
    normalization = _as_normalization(normalization)
    repo = Path(repo)
    model = _detached_copy(model)
    if rule is None:
        rule = CheckRule() if tolerance is None else CheckRule(floor=tolerance)
    graphs = build_graphs(model, normalization, internals=internals)
    report = verify(model, graphs, normalization, rule, check_inputs)
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
        report,
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
    report: Report,
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
        verification=report.summary(),
    )


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
