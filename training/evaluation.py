"""Running a trained module on data: predictions, and a task's metrics on a split.

Tasks import this (their reports run the model); it imports no task and not the loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from training.losses import Objective
from training.model import PeepholeLSTM

if TYPE_CHECKING:  # annotations only: tasks import this module
    from training.tasks.base import Split, Task, TaskData

BATCH = 1024


@torch.no_grad()
def predict(model: PeepholeLSTM, x: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """Outputs (after the output activation) of whole sequences from the zero state.
    Leaves the module in eval mode."""
    model.eval()
    outs = [
        model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch], dtype=np.float32)))[0]
        for i in range(0, len(x), batch)
    ]
    return torch.cat(outs).numpy()


@torch.no_grad()
def evaluate(
    model: PeepholeLSTM, task: Task, split: Split, data: TaskData, objective: Objective
) -> dict[str, Any]:
    """The task's metrics plus the training loss on a split (whole sequences, zero state)."""
    model.eval()
    x = torch.from_numpy(split.x)
    out = torch.cat(
        [
            model(x[i : i + BATCH], return_preactivation=objective.on_logits)[0]
            for i in range(0, len(x), BATCH)
        ]
    )
    loss = objective(out, torch.from_numpy(split.y), torch.from_numpy(split.mask))
    pred = model.preactivation_to_output(out) if objective.on_logits else out
    return {"loss": float(loss), **task.evaluate(pred.numpy(), split, data)}


def numpy_loss(kind: str, pred: np.ndarray, split: Split) -> float:
    """Mean squared error (mse) or binary cross-entropy (bce) of activated outputs on the
    counted steps: a loss comparable across set-ups whatever they trained on."""
    m = split.mask.astype(bool)
    p, y = pred[m], split.y[m]
    if kind == "mse":
        return float(np.mean((p - y) ** 2))
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
