"""Self-describing checkpoints: a trained model that no export check can lose.

`python -m training train` saves one BEFORE it exports, as `<out>/<name>/<version>.ckpt`
(which reserves that version number), holding the weights, the network's configuration, the
normalisation, the task and its settings (seed, options), the card's `training` section and
metrics.json. A successful export moves it into the version directory as `checkpoint.pt`;
a refused one leaves it where it is, and `python -m training export CHECKPOINT --out DIR`
exports it later (e.g. with another `--export-tolerance`). The checkpoint holds no training
data: to check the export on the task's own data, `export` regenerates it from the task
settings (for `csv`, re-reads the file, if it is unchanged).

The file is a plain `torch.save` of tensors, strings and numbers, loaded with
`weights_only=True` (no pickled code runs on loading).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.inference.card import NAME_PATTERN
from training.errors import UserError
from training.export import CHECKPOINT_SUFFIX, export_model, next_version
from training.model import PeepholeConfig, PeepholeLSTM
from training.plots import plot_history
from training.tasks import TASKS, TaskData, get_task
from training.verify import CheckInputs, CheckRule, check_inputs_from_data

FORMAT = "peephole-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class Checkpoint:
    name: str
    version: int | None  # reserved at save time (None until then)
    task: str
    config: dict[str, Any]  # PeepholeConfig fields
    state_dict: dict[str, torch.Tensor]
    input_names: list[str]
    output_names: list[str]
    training: dict[str, Any]  # the card's `training` section
    metrics: dict[str, Any]  # metrics.json
    seed: int = 0
    quick: bool = False
    task_options: dict[str, Any] = field(default_factory=dict)
    normalization: dict[str, Any] | None = None
    encoding: dict[str, Any] | None = None
    description: str = ""
    # Range of the training inputs (raw units) and the task's length, for the random cases.
    input_range: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- making
    @classmethod
    def from_training(
        cls,
        model: PeepholeLSTM,
        *,
        task: str,
        name: str,
        version: int | None,
        data: TaskData,
        training: dict[str, Any],
        metrics: dict[str, Any],
        seed: int,
        quick: bool,
        task_options: dict[str, Any],
        description: str,
    ) -> Checkpoint:

        inputs = check_inputs_from_data(data)
        return cls(
            name=name,
            version=version,
            task=task,
            config=asdict(model.config),
            state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            input_names=list(data.input_names),
            output_names=list(data.output_names),
            training=jsonable(training),
            metrics=jsonable(metrics),
            seed=seed,
            quick=quick,
            task_options=jsonable(task_options),
            normalization=jsonable(data.normalization),
            encoding=jsonable(data.encoding),
            description=description,
            input_range={
                "low": inputs.low.tolist(),
                "high": inputs.high.tolist(),
                "length": inputs.length,
            },
        )

    def model(self) -> PeepholeLSTM:
        m = PeepholeLSTM(PeepholeConfig(**self.config))
        m.load_state_dict(self.state_dict)
        return m.eval()

    # ---------------------------------------------------------------- files
    def save(self, path: Path) -> Path:
        """Write atomically (a temporary file, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}
        torch.save(payload, tmp)
        os.replace(tmp, path)
        return path

    def save_into(self, repo: Path) -> Path:
        """Save as `<repo>/<name>/<version>.ckpt`, reserving the version (the next free
        one unless the checkpoint names one)."""

        check_target(repo, self.name, self.version)
        if self.version is None:
            self.version = next_version(repo, self.name)
        path = Path(repo, self.name, f"{self.version}{CHECKPOINT_SUFFIX}")
        if path.exists():
            raise UserError(
                f"{path} exists (a model kept from an earlier run): export it with "
                f"`python -m training export {path}`, or move it away"
            )
        return self.save(path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such checkpoint file")
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a file that is not its own
            raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__})") from e
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise UserError(f"{path}: not a peephole checkpoint")
        if raw.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{path}: checkpoint format {raw.get('format_version')} is not "
                f"{FORMAT_VERSION}; export it with the version that wrote it"
            )
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    # ---------------------------------------------------------------- export
    def export(
        self,
        repo: Path,
        path: Path | None = None,
        *,
        rule: CheckRule | None = None,
        inputs: CheckInputs | None = None,
        name: str | None = None,
        version: int | None = None,
        description: str | None = None,
    ) -> Path:
        """Export to `<repo>/<name>/<version>/`, with metrics.json, training_curve.png and
        the checkpoint itself (moved there from `path` if it was this version's reserved
        file, else copied). Raises verify.ExportMismatch, leaving everything as it was."""

        repo = Path(repo)
        name = name or self.name
        reserved = (
            path is not None
            and Path(path).resolve()
            == Path(repo, name, f"{self.version}{CHECKPOINT_SUFFIX}").resolve()
        )
        if version is None:
            free = self.version is not None and not Path(repo, name, str(self.version)).exists()
            version = self.version if (reserved or free) else next_version(repo, name)
        check_target(repo, name, version)
        version_dir = export_model(
            self.model(),
            repo,
            name,
            task=self.task,
            training=self.training,
            input_names=self.input_names,
            output_names=self.output_names,
            normalization=self.normalization,
            encoding=self.encoding,
            description=self.description if description is None else description,
            version=version,
            rule=rule,
            check_inputs=inputs or self.random_inputs(),
        )
        metrics = {**self.metrics, "version_dir": str(version_dir)}
        (version_dir / "metrics.json").write_text(_dumps(metrics) + "\n")
        plot_history(
            self.metrics.get("history", []),
            version_dir / "training_curve.png",
            title=f"{name} (seed {self.seed})",
            monitor=_monitor(self.task),
        )
        if path is not None:
            target = version_dir / CHECKPOINT_FILE
            if reserved:
                os.replace(path, target)
            else:
                shutil.copyfile(path, target)
        else:
            self.save(version_dir / CHECKPOINT_FILE)
        return version_dir

    def random_inputs(self) -> CheckInputs:

        r = self.input_range
        return CheckInputs(
            data=[], low=np.asarray(r["low"]), high=np.asarray(r["high"]), length=int(r["length"])
        )

    def task_inputs(self) -> CheckInputs:
        """The task's own validation data again (regenerated from the task settings), or
        the random cases only when that is impossible (a csv file moved or changed)."""

        try:
            data = get_task(self.task).generate(self.seed, quick=self.quick, **self.task_options)
        except (UserError, KeyError, OSError, ValueError) as e:
            print(
                f"note: checking on random inputs only: the task's data cannot be made again ({e})",
                file=sys.stderr,
            )
            return self.random_inputs()
        digest = self.training.get("data", {}).get("sha256")
        if digest is not None and data.data.get("sha256") != digest:
            print(
                "note: checking on random inputs only: the data file changed since training",
                file=sys.stderr,
            )
            return self.random_inputs()
        return check_inputs_from_data(data)


def check_target(repo: Path, name: str, version: int | None) -> None:
    """Refuse, before any training, a model name or version the export could not write."""

    if not re.match(NAME_PATTERN, name):
        raise UserError(
            f"--name {name!r}: use lower-case letters, digits, '.', '_' and '-' "
            "(at most 64, starting with a letter or digit)"
        )
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise UserError(f"--out {repo}: exists and is not a directory")
    if version is not None:
        if version < 1:
            raise UserError(f"--version {version}: must be a positive integer")
        if (repo / name / str(version)).exists():
            raise UserError(
                f"{repo / name / str(version)} already exists: choose another "
                "--version, or leave it out for the next free one"
            )


def _monitor(task: str) -> str:

    return TASKS[task].monitor if task in TASKS else "loss"


def _dumps(obj: Any) -> str:

    return json.dumps(jsonable(obj), indent=2)


def jsonable(obj: Any) -> Any:
    """Plain JSON types (numpy scalars and arrays, NaN -> None, paths -> str)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path | str):  # also str subclasses such as torch.__version__
        return str(obj)
    return obj
