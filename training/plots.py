"""The training-curve figure written beside every trained model (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(
    history: list[dict[str, Any]], path: Path, title: str = "", monitor: str = "loss"
) -> Path:
    """Train/validation loss per epoch (log scale) and, if the task watches another metric,
    that metric on validation in a second panel."""
    epochs = [h["epoch"] for h in history]
    extra = monitor != "loss" and all(f"val_{monitor}" in h for h in history)
    fig, axes = plt.subplots(1, 2 if extra else 1, figsize=(10 if extra else 6, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    if all(h["train_loss"] > 0 and h["val_loss"] > 0 for h in history):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    if extra:
        ax2 = axes[0, 1]
        ax2.plot(epochs, [h[f"val_{monitor}"] for h in history], color="C2")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel(f"validation {monitor}")
        ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
