"""The training objectives, shared by the loop (train.py), evaluation and reproduce.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Kind = Literal["mse", "bce", "ce", "sse"]


@dataclass(frozen=True)
class Objective:
    """A loss over the counted steps of a batch (`mask` [B, T] of 0/1).

    - `mse`: mean squared error of the outputs, averaged over counted steps;
    - `bce`: binary cross-entropy on the logits (stable), `pos_weight` on positive targets
      (rare events: the constant-rate plateau is then no trap);
    - `ce`: cross-entropy on the logits of a softmax output;
    - `sse`: the papers' objective, 0.5 * summed squared error of the activated outputs,
      which their online learning rates are for.
    """

    kind: Kind
    pos_weight: float = 1.0

    @property
    def on_logits(self) -> bool:
        """Whether the loss takes the output layer's pre-activation (`return_preactivation`)."""
        return self.kind in ("bce", "ce")

    def __call__(self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "sse":
            return 0.5 * (((out - y) ** 2).sum(dim=-1) * mask).sum()
        if self.kind == "mse":
            per = ((out - y) ** 2).mean(dim=-1)
        elif self.kind == "bce":
            pw = None if self.pos_weight == 1.0 else torch.tensor(self.pos_weight, dtype=out.dtype)
            per = F.binary_cross_entropy_with_logits(out, y, reduction="none", pos_weight=pw).mean(
                dim=-1
            )
        elif self.kind == "ce":
            per = -(y * F.log_softmax(out, dim=-1)).sum(dim=-1)
        else:
            raise ValueError(f"unknown loss {self.kind!r}")
        return (per * mask).sum() / mask.sum().clamp_min(1.0)
