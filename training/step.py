"""One optimiser step: the block every training loop here runs (train.py, reproduce.py)."""

from __future__ import annotations

import torch

from training.losses import Objective
from training.model import PeepholeLSTM, State


def train_step(
    model: PeepholeLSTM,
    opt: torch.optim.Optimizer,
    objective: Objective,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    state: State | None = None,
    clip: float | None = None,
) -> tuple[float, torch.Tensor, State]:
    """Forward from `state` (None: zeros), loss, backward, gradient-norm clip, update.

    Returns the loss, the outputs the loss saw (logits for bce/ce; computed before the
    update, which online criteria need) and the final state, detached: a stateful caller
    passes it to the next chunk (truncated BPTT).
    """
    out, final = model(x, state, return_preactivation=objective.on_logits)
    loss = objective(out, y, mask)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss.item(), out.detach(), {k: v.detach() for k, v in final.items()}
