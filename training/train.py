"""Train a peephole LSTM on a task, keep a checkpoint, export it to the model repository.

One readable loop (nanoGPT style), in stages:

  0. determinism: seeds, deterministic algorithms, a fixed number of threads;
  1. data: the task's seeded generator -> train/validation/test tensors;
  2. model + optimiser: PeepholeLSTM from the task's architecture (CLI overrides), Adam,
     a learning-rate schedule;
  3. epochs of BPTT: shuffled minibatches of whole sequences, or, for stateful tasks,
     the training streams cut into chunks with the state carried over (truncated BPTT);
     one optimiser step per batch (training/step.py); validation after every epoch; early
     stopping (patience, or the time budget) that restores the best weights;
  4. final metrics on validation and test, plus the task's report (baselines, probes);
  5. checkpoint: weights, settings and metrics saved in the output folder BEFORE exporting,
     so a refused export loses nothing (`python -m training export` takes it up again);
  6. export (ONNX checked against PyTorch, training/verify.py) with the card's `training`
     section, then metrics.json and training_curve.png beside the model.

Same seed, same settings, same thread count -> the same weights (tests check it).
"""

from __future__ import annotations

import copy
import math
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from training.checkpoint import Checkpoint, jsonable
from training.evaluation import evaluate
from training.losses import Objective
from training.model import PeepholeConfig, PeepholeLSTM
from training.step import train_step
from training.tasks import Split, Task, TaskData, TrainDefaults, get_task
from training.verify import CheckRule, ExportMismatch, check_inputs_from_data


@dataclass
class TrainConfig:
    """Everything that decides the result; recorded in the card and metrics.json."""

    task: str
    out: Path | None = Path("models")  # None: train only, no checkpoint, no export
    name: str | None = None
    version: int | None = None
    seed: int = 0
    quick: bool = False
    # Hyper-parameters the user set (fields of TrainDefaults); the rest are the task's.
    overrides: dict[str, Any] = field(default_factory=dict)
    # Architecture overrides (fields of card.Architecture).
    arch: dict[str, Any] = field(default_factory=dict)
    # Task-specific options (the csv task's file and columns).
    task_options: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    progress: bool = True
    command: str = ""
    description: str = ""
    rule: CheckRule = field(default_factory=CheckRule)  # the export check's rule


@dataclass
class TrainResult:
    model: PeepholeLSTM
    metrics: dict[str, Any]
    version_dir: Path | None
    checkpoint: Path | None = None


def resolve(cfg: TrainConfig, task: Task) -> TrainDefaults:
    """The effective hyper-parameters: the user's values over the task's defaults."""
    unknown = set(cfg.overrides) - set(TrainDefaults.names())
    if unknown:
        raise ValueError(f"unknown hyper-parameters {sorted(unknown)}")
    defaults = (
        replace(task.defaults, epochs=task.defaults.quick_epochs) if cfg.quick else (task.defaults)
    )
    return replace(defaults, **cfg.overrides).check()


def architecture(cfg: TrainConfig, task: Task) -> dict[str, Any]:
    """The knobs the network is built with: the task's, then the user's."""
    return {**task.architecture, **cfg.arch}


@contextmanager
def deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seeds and settings that make a run repeatable on one machine; torch's global thread
    count and determinism flag are restored afterwards. Float sums depend on the thread
    count, so it is fixed (default 1) and recorded."""
    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])


# --------------------------------------------------------------------- train
def train(cfg: TrainConfig) -> TrainResult:
    """Train, evaluate, checkpoint and export one model (see the module docstring)."""
    task = get_task(cfg.task)
    hp = resolve(cfg, task)
    t_start = time.perf_counter()
    with deterministic(cfg.seed, cfg.threads):  # -- 0. determinism
        # -- 1. data --------------------------------------------------------
        data = task.generate(cfg.seed, quick=cfg.quick, **cfg.task_options)

        # -- 2. model, optimiser, schedule ------------------------------------
        mcfg = PeepholeConfig(
            input_size=data.train.x.shape[2],
            output_size=data.train.y.shape[2],
            **architecture(cfg, task),
        )
        model = PeepholeLSTM(mcfg)
        opt = torch.optim.Adam(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        sched = _schedule(opt, hp)
        objective = Objective(task.loss, hp.pos_weight)

        # -- 3. epochs of BPTT (best weights restored) -------------------------
        fit = _fit(model, opt, sched, objective, task, data, hp, cfg, t_start)

        # -- 4. final metrics -------------------------------------------------
        final = _final(model, objective, task, data, fit)
    wall = time.perf_counter() - t_start
    training_info = {
        "seed": cfg.seed,
        "data": data.data,
        "steps": fit.updates,
        "sequences": fit.sequences,
        "time_steps": fit.time_steps,
        "wall_time_seconds": round(wall, 2),
        "metrics": jsonable(final),
        "command": cfg.command,
        "hyperparameters": _hyperparameters(hp, cfg),
        "environment": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    metrics = jsonable(
        {
            "task": cfg.task,
            "seed": cfg.seed,
            "hyperparameters": training_info["hyperparameters"],
            "architecture": asdict(mcfg),
            "history": fit.history,
            "final": final,
            "steps": fit.updates,
            "sequences": fit.sequences,
            "time_steps": fit.time_steps,
            "wall_time_seconds": wall,
            "command": cfg.command,
        }
    )
    if cfg.out is None:
        return TrainResult(model=model, metrics=metrics, version_dir=None)

    # -- 5. checkpoint, before anything can refuse the export --------------------
    ckpt = Checkpoint.from_training(
        model,
        task=task.name,
        name=cfg.name or task.default_name(cfg.task_options),
        version=cfg.version,
        data=data,
        training=training_info,
        metrics=metrics,
        seed=cfg.seed,
        quick=cfg.quick,
        task_options=cfg.task_options,
        description=cfg.description or task.describe(data, final),
    )
    path = ckpt.save_into(Path(cfg.out))

    # -- 6. export (a refusal raises ExportMismatch; the checkpoint stays) -----------
    try:
        version_dir = ckpt.export(
            Path(cfg.out), path, rule=cfg.rule, inputs=check_inputs_from_data(data)
        )
    except ExportMismatch as e:
        e.checkpoint = path
        raise
    metrics["version_dir"] = str(version_dir)
    return TrainResult(
        model=model,
        metrics=metrics,
        version_dir=version_dir,
        checkpoint=version_dir / "checkpoint.pt",
    )


# ---------------------------------------------------------------------- stages
def _schedule(opt: torch.optim.Optimizer, hp: TrainDefaults) -> Any:
    if hp.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=hp.epochs, eta_min=hp.lr * 1e-3
        )
    if hp.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=0.5, patience=max(2, hp.patience // 3)
        )
    return None


@dataclass
class _Batch:
    rows: np.ndarray  # sequences (streams) in this batch
    steps: slice  # time steps
    first: bool  # the first chunk of these streams: start from the zero state


def _batches(split: Split, hp: TrainDefaults, gen: torch.Generator) -> Iterator[_Batch]:
    """Stateless: shuffled minibatches of whole sequences. Stateful: the streams in fixed
    groups, each cut into chunks in time order (the state runs on from chunk to chunk)."""
    if not hp.stateful:
        perm = torch.randperm(len(split), generator=gen).numpy()
        for i in range(0, len(perm), hp.batch_size):
            yield _Batch(np.sort(perm[i : i + hp.batch_size]), slice(None), True)
        return
    order = np.arange(len(split))
    for i in range(0, len(split), hp.batch_size):
        for t0 in range(0, split.x.shape[1], hp.chunk_len):
            yield _Batch(order[i : i + hp.batch_size], slice(t0, t0 + hp.chunk_len), t0 == 0)


@dataclass
class _Fit:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    stopped: str = "epochs"  # epochs | patience | budget | diverged
    updates: int = 0
    sequences: int = 0
    time_steps: int = 0
    online_met: int | None = None  # stream step at which the online criterion first held


def _fit(
    model: PeepholeLSTM,
    opt: torch.optim.Optimizer,
    sched: Any,
    objective: Objective,
    task: Task,
    data: TaskData,
    hp: TrainDefaults,
    cfg: TrainConfig,
    t_start: float,
) -> _Fit:
    tr = data.train
    x, y, m = (torch.from_numpy(a) for a in (tr.x, tr.y, tr.mask))
    gen = torch.Generator().manual_seed(cfg.seed)
    fit = _Fit()
    best: tuple[float, float] | None = None
    best_state, bad_epochs = copy.deepcopy(model.state_dict()), 0
    runs = np.zeros(len(tr), dtype=np.int64)  # consecutive-ok counts per stream (online)
    bar = tqdm(range(1, hp.epochs + 1), desc=cfg.task, disable=not cfg.progress, dynamic_ncols=True)
    for epoch in bar:
        # 3a. one pass over the training data, one optimiser step per batch
        model.train()
        losses = []
        state = None
        for b in _batches(tr, hp, gen):
            if b.first:
                state = None
                fit.sequences += len(b.rows)
            loss, out, state = train_step(
                model,
                opt,
                objective,
                x[b.rows, b.steps],
                y[b.rows, b.steps],
                m[b.rows, b.steps],
                state if hp.stateful else None,
                hp.clip,
            )
            losses.append(loss)
            fit.updates += 1
            fit.time_steps += len(b.rows) * out.shape[1]
            if hp.stateful and task.online_run is not None and fit.online_met is None:
                fit.online_met = _track_online(
                    task,
                    model,
                    out,
                    y[b.rows, b.steps],
                    m[b.rows, b.steps],
                    runs,
                    b.rows,
                    (epoch - 1) * tr.x.shape[1] + b.steps.start,
                )

        # 3b. validation
        val = evaluate(model, task, data.val, data, objective)
        row = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "val_loss": val["loss"],
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t_start,
            **{f"val_{k}": v for k, v in val.items() if k != "loss" and _scalar(v)},
        }
        fit.history.append(row)
        if not math.isfinite(val["loss"]):
            fit.stopped = "diverged"
            break

        # 3c. model selection, schedule, early stopping
        score = (float(val[task.monitor]), val["loss"])
        if _better(score, best, task.monitor_mode):
            best, fit.best_epoch, bad_epochs = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(val["loss"])
        elif sched is not None:
            sched.step()
        post = {"loss": f"{row['train_loss']:.3g}", "val": f"{val['loss']:.3g}"}
        if task.monitor != "loss":
            post[task.monitor] = f"{val[task.monitor]:.3g}"
        bar.set_postfix(post)
        if bad_epochs >= hp.patience:
            fit.stopped = "patience"
            break
        if hp.max_minutes is not None and row["seconds"] >= 60 * hp.max_minutes:
            fit.stopped = "budget"
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return fit


def _final(
    model: PeepholeLSTM, objective: Objective, task: Task, data: TaskData, fit: _Fit
) -> dict[str, Any]:
    final_val = evaluate(model, task, data.val, data, objective)
    final_test = evaluate(model, task, data.test, data, objective)
    final = {
        "best_epoch": fit.best_epoch,
        "epochs_run": len(fit.history),
        "stopped": fit.stopped,
        "solved": task.solved(final_test),
        "val": final_val,
        "test": final_test,
        **task.report(model, data, final_test),
    }
    if task.online_run is not None:
        final["online_criterion"] = {
            "consecutive_ok_steps": task.online_run,
            "met_at_stream_step": fit.online_met,
            "streams": len(data.train),
            "note": "training streams run in parallel; steps counted per stream",
        }
    return final


def _hyperparameters(hp: TrainDefaults, cfg: TrainConfig) -> dict[str, Any]:
    out = asdict(hp)
    out.pop("quick_epochs")
    return {**out, "optimizer": "adam", "threads": cfg.threads, "quick": cfg.quick}


def _better(score: tuple[float, float], best: tuple[float, float] | None, mode: str) -> bool:
    """Monitor value first (max or min), validation loss as the tie-break."""
    if best is None:
        return True
    sign = -1.0 if mode == "max" else 1.0
    return (sign * score[0], score[1]) < (sign * best[0], best[1])


def _track_online(
    task: Task,
    model: PeepholeLSTM,
    out: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    runs: np.ndarray,
    idx: np.ndarray,
    t0: int,
) -> int | None:
    """Update the per-stream runs of consecutive ok (counted) steps with this chunk's
    predictions (made before the update); the stream step at which a run first reaches
    `task.online_run`, else None."""
    with torch.no_grad():
        pred = out if task.loss == "mse" else model.preactivation_to_output(out)
    ok = task.step_ok(pred.numpy(), y.numpy())
    counted = mask.numpy() > 0
    met: int | None = None
    for row, stream in enumerate(idx):
        for t in np.flatnonzero(counted[row]):
            runs[stream] = runs[stream] + 1 if ok[row, t] else 0
            if runs[stream] >= task.online_run:
                step = t0 + int(t) + 1
                met = step if met is None else min(met, step)
                break
    return met


def _scalar(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
