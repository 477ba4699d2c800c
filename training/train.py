"""Train a peephole LSTM on a task and export it to the model repository.

One readable loop (nanoGPT style), in stages:

  0. determinism: seeds, deterministic algorithms, a fixed number of threads;
  1. data: the task's seeded generator -> train/validation/test tensors;
  2. model + optimiser: PeepholeLSTM from the task's architecture (CLI overrides), Adam,
     a learning-rate schedule;
  3. epochs of BPTT: shuffled minibatches of whole sequences, or, for stateful tasks,
     the training streams cut into chunks with the state carried over (truncated BPTT);
     gradient-norm clipping; validation after every epoch; early stopping that restores
     the best weights;
  4. final metrics on validation and test, plus the task's report (baselines, probes);
  5. export (ONNX checked against PyTorch) with the card's `training` section, then
     metrics.json and training_curve.png beside the model.

Same seed, same settings, same thread count -> the same weights (tests check it).
"""

from __future__ import annotations

import copy
import json
import math
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.model import PeepholeConfig, PeepholeLSTM
from training.tasks import Split, Task, TaskData, get_task


@dataclass
class TrainConfig:
    """Everything that decides the result; recorded in the card and metrics.json."""

    task: str
    out: Path | None = Path("models")  # None: train only, export nothing
    name: str | None = None
    seed: int = 0
    quick: bool = False
    # Hyper-parameters: None = the task's default (TrainDefaults).
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    clip: float | None = None
    patience: int | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    chunk_len: int | None = None
    pos_weight: float | None = None
    # Architecture overrides (fields of card.Architecture).
    arch: dict[str, Any] = field(default_factory=dict)
    # Task-specific options (the csv task's file and columns).
    task_options: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    progress: bool = True
    command: str = ""
    description: str = ""
    version: int | None = None
    export_tolerance: float | None = None  # None: the exporter's default (1e-5)


@dataclass
class TrainResult:
    model: PeepholeLSTM
    metrics: dict[str, Any]
    version_dir: Path | None


# ------------------------------------------------------------------ helpers
def set_determinism(seed: int, threads: int) -> None:
    """Seeds and settings that make a run repeatable on one machine. Float sums depend on
    the thread count, so it is fixed (default 1) and recorded."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def masked_loss(kind: str, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                pos_weight: float = 1.0) -> torch.Tensor:
    """Mean loss over the counted steps. `out` is the pre-activation for bce/ce (stable
    log-sigmoid / log-softmax), the activated output for mse. `pos_weight` weighs the
    positive targets of bce (rare events: the constant-rate plateau is then no trap)."""
    if kind == "mse":
        per = ((out - y) ** 2).mean(dim=-1)
    elif kind == "bce":
        pw = None if pos_weight == 1.0 else torch.tensor(pos_weight, dtype=out.dtype)
        per = F.binary_cross_entropy_with_logits(out, y, reduction="none",
                                                 pos_weight=pw).mean(dim=-1)
    elif kind == "ce":
        per = -(y * F.log_softmax(out, dim=-1)).sum(dim=-1)
    else:
        raise ValueError(f"unknown loss {kind!r}")
    return (per * mask).sum() / mask.sum().clamp_min(1.0)


def forward_for_loss(model: PeepholeLSTM, kind: str, x: torch.Tensor,
                     state: dict[str, torch.Tensor] | None = None):
    """(loss input, state): logits for bce/ce, outputs for mse."""
    return model(x, state, return_preactivation=kind != "mse")


@torch.no_grad()
def predict(model: PeepholeLSTM, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Outputs (after the output activation) for whole sequences from the zero state."""
    model.eval()
    outs = [model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch], dtype=np.float32)))[0]
            for i in range(0, len(x), batch)]
    return torch.cat(outs).numpy()


@torch.no_grad()
def evaluate(model: PeepholeLSTM, task: Task, split: Split, data: TaskData,
             pos_weight: float = 1.0) -> dict[str, Any]:
    """The task's metrics plus the training loss on a split."""
    model.eval()
    x = torch.from_numpy(split.x)
    out = torch.cat([forward_for_loss(model, task.loss, x[i : i + 1024])[0]
                     for i in range(0, len(x), 1024)])
    loss = masked_loss(task.loss, out, torch.from_numpy(split.y), torch.from_numpy(split.mask),
                       pos_weight)
    pred = out if task.loss == "mse" else model.preactivation_to_output(out)
    return {"loss": float(loss), **task.evaluate(pred.numpy(), split, data)}


def _better(score: tuple[float, float], best: tuple[float, float] | None, mode: str) -> bool:
    """Monitor value first (max or min), validation loss as the tie-break."""
    if best is None:
        return True
    sign = -1.0 if mode == "max" else 1.0
    a, b = (sign * score[0], score[1]), (sign * best[0], best[1])
    return a < b


def resolve(cfg: TrainConfig, task: Task) -> dict[str, Any]:
    """The effective hyper-parameters: CLI values over the task's defaults."""
    d = task.defaults
    hp = {
        "epochs": cfg.epochs if cfg.epochs is not None else (d.quick_epochs if cfg.quick
                                                             else d.epochs),
        "lr": cfg.lr if cfg.lr is not None else d.lr,
        "batch_size": cfg.batch_size if cfg.batch_size is not None else d.batch_size,
        "clip": cfg.clip if cfg.clip is not None else d.clip,
        "patience": cfg.patience if cfg.patience is not None else d.patience,
        "weight_decay": cfg.weight_decay if cfg.weight_decay is not None else d.weight_decay,
        "schedule": cfg.schedule if cfg.schedule is not None else d.schedule,
        "stateful": d.stateful,
        "chunk_len": cfg.chunk_len if cfg.chunk_len is not None else d.chunk_len,
        "pos_weight": cfg.pos_weight if cfg.pos_weight is not None else d.pos_weight,
        "optimizer": "adam",
        "threads": cfg.threads,
        "quick": cfg.quick,
    }
    if hp["epochs"] < 1 or hp["batch_size"] < 1 or hp["lr"] <= 0 or hp["chunk_len"] < 1:
        raise ValueError("epochs, batch size, chunk length and learning rate must be positive")
    return hp


def _batches_sequences(split: Split, batch_size: int, gen: torch.Generator):
    """Shuffled minibatches of whole sequences (independent, each from the zero state)."""
    perm = torch.randperm(len(split), generator=gen).numpy()
    for i in range(0, len(perm), batch_size):
        idx = np.sort(perm[i : i + batch_size])
        yield idx, None


# --------------------------------------------------------------------- train
def train(cfg: TrainConfig) -> TrainResult:
    """Train, evaluate and export one model (see the module docstring for the stages).
    Torch's global thread count and determinism flag are restored afterwards."""
    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])


def _train(cfg: TrainConfig) -> TrainResult:
    task = get_task(cfg.task)
    hp = resolve(cfg, task)
    t_start = time.perf_counter()

    # -- 0. determinism ------------------------------------------------------
    set_determinism(cfg.seed, cfg.threads)

    # -- 1. data -------------------------------------------------------------
    data = task.generate(cfg.seed, quick=cfg.quick, **cfg.task_options)
    tr = data.train
    x_tr, y_tr, m_tr = (torch.from_numpy(a) for a in (tr.x, tr.y, tr.mask))

    # -- 2. model, optimiser, schedule ----------------------------------------
    arch = {**task.architecture, **cfg.arch}
    mcfg = PeepholeConfig(input_size=tr.x.shape[2], output_size=tr.y.shape[2], **arch)
    model = PeepholeLSTM(mcfg)
    opt = torch.optim.Adam(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    if hp["schedule"] == "cosine":
        sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=hp["epochs"], eta_min=hp["lr"] * 1e-3)
    elif hp["schedule"] == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=0.5, patience=max(2, hp["patience"] // 3))
    elif hp["schedule"] == "none":
        sched = None
    else:
        raise ValueError(f"unknown schedule {hp['schedule']!r}")
    gen = torch.Generator().manual_seed(cfg.seed)

    # -- 3. epochs of BPTT ----------------------------------------------------
    history: list[dict[str, Any]] = []
    best: tuple[float, float] | None = None
    best_state, best_epoch, bad_epochs = copy.deepcopy(model.state_dict()), 0, 0
    updates = sequences = time_steps = 0
    online_met: int | None = None  # stream step at which the online criterion first held
    runs = np.zeros(len(tr), dtype=np.int64)  # current consecutive-ok counts per stream
    bar = tqdm(range(1, hp["epochs"] + 1), desc=cfg.task, disable=not cfg.progress,
               dynamic_ncols=True)
    for epoch in bar:
        model.train()
        losses = []
        if hp["stateful"]:
            # Streams in fixed groups; chunks in time order with the state carried over.
            order = np.arange(len(tr))
            groups = [order[i : i + hp["batch_size"]] for i in range(0, len(tr),
                                                                      hp["batch_size"])]
            steps_total = tr.x.shape[1]
            for idx in groups:
                state = None
                for t0 in range(0, steps_total, hp["chunk_len"]):
                    sl = slice(t0, t0 + hp["chunk_len"])
                    out, state = forward_for_loss(model, task.loss, x_tr[idx, sl], state)
                    loss = masked_loss(task.loss, out, y_tr[idx, sl], m_tr[idx, sl],
                                       hp["pos_weight"])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), hp["clip"])
                    opt.step()
                    state = {k: v.detach() for k, v in state.items()}
                    losses.append(loss.item())
                    updates += 1
                    time_steps += len(idx) * out.shape[1]
                    if task.online_run is not None and online_met is None:
                        online_met = _track_online(task, model, out, y_tr[idx, sl],
                                                   m_tr[idx, sl], runs, idx,
                                                   (epoch - 1) * steps_total + t0)
            sequences += len(tr)
        else:
            for idx, _ in _batches_sequences(tr, hp["batch_size"], gen):
                out, _ = forward_for_loss(model, task.loss, x_tr[idx])
                loss = masked_loss(task.loss, out, y_tr[idx], m_tr[idx], hp["pos_weight"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), hp["clip"])
                opt.step()
                losses.append(loss.item())
                updates += 1
                sequences += len(idx)
                time_steps += len(idx) * out.shape[1]

        # Validation, early stopping, schedule.
        val = evaluate(model, task, data.val, data, hp["pos_weight"])
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val["loss"],
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t_start,
               **{f"val_{k}": v for k, v in val.items() if k != "loss" and _scalar(v)}}
        history.append(row)
        score = (float(val[task.monitor]), val["loss"])
        if not math.isfinite(val["loss"]):
            break
        if _better(score, best, task.monitor_mode):
            best, best_epoch, bad_epochs = score, epoch, 0
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
        if bad_epochs >= hp["patience"]:
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()

    # -- 4. final metrics ---------------------------------------------------
    final_val = evaluate(model, task, data.val, data, hp["pos_weight"])
    final_test = evaluate(model, task, data.test, data, hp["pos_weight"])
    report = task.report(model, data, final_test)
    wall = time.perf_counter() - t_start
    final = {
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "solved": task.solved(final_test),
        "val": final_val,
        "test": final_test,
        **report,
    }
    if task.online_run is not None:
        final["online_criterion"] = {
            "consecutive_ok_steps": task.online_run,
            "met_at_stream_step": online_met,
            "streams": len(tr),
            "note": "training streams run in parallel; steps counted per stream",
        }
    training_info = {
        "seed": cfg.seed,
        "data": data.data,
        "steps": updates,
        "sequences": sequences,
        "time_steps": time_steps,
        "wall_time_seconds": round(wall, 2),
        "metrics": _jsonable(final),
        "command": cfg.command,
        "hyperparameters": hp,
        "environment": {"torch": torch.__version__, "numpy": np.__version__,
                        "python": platform.python_version()},
    }
    metrics = {"task": cfg.task, "seed": cfg.seed, "hyperparameters": hp,
               "architecture": asdict(mcfg), "history": history, "final": final,
               "steps": updates, "sequences": sequences, "time_steps": time_steps,
               "wall_time_seconds": wall, "command": cfg.command}

    # -- 5. export + files beside the model ------------------------------------
    version_dir = None
    if cfg.out is not None:
        from training.export import export_model
        from training.plots import plot_history

        try:
            version_dir = export_model(
                model, Path(cfg.out), cfg.name or task.name, task=task.name,
                training=training_info, input_names=data.input_names,
                output_names=data.output_names, normalization=data.normalization,
                encoding=data.encoding, description=cfg.description or task.description,
                version=cfg.version, **({"tolerance": cfg.export_tolerance}
                                        if cfg.export_tolerance is not None else {}),
            )
        except Exception:
            # Keep the trained weights: training may have taken minutes.
            keep = Path(tempfile.mkdtemp(prefix=f"peephole-{task.name}-"))
            torch.save(model.state_dict(), keep / "state_dict.pt")
            (keep / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2))
            print(f"export failed; weights and metrics kept in {keep}", file=sys.stderr)
            raise
        metrics["version_dir"] = str(version_dir)
        (version_dir / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2) + "\n")
        plot_history(history, version_dir / "training_curve.png",
                     title=f"{cfg.name or task.name} (seed {cfg.seed})", monitor=task.monitor)
    return TrainResult(model=model, metrics=_jsonable(metrics), version_dir=version_dir)


def _track_online(task: Task, model: PeepholeLSTM, out: torch.Tensor, y: torch.Tensor,
                  mask: torch.Tensor, runs: np.ndarray, idx: np.ndarray, t0: int) -> int | None:
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


def _jsonable(obj: Any) -> Any:
    """Plain JSON types (numpy scalars, NaN -> None, paths -> str)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj
