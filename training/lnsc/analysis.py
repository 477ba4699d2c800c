"""Trial-aligned views of recorded blocks: what the figures plot and the table measures."""

from __future__ import annotations

import numpy as np

from training.lnsc.experiment import BlockLog
from training.lnsc.kernel import REC_DELTA, REC_FIXED, REC_O, REC_V

BEFORE, AFTER = 2, 14  # window: trial phase -2 .. 14
PHASES = np.arange(-BEFORE, AFTER + 1)


def windows(
    logs: list[BlockLog], types: tuple[int, ...], nets: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Records around each trial of the given types: [trials, W, R] and each trial's network.

    Steps outside the block are NaN; the window ends early where the next trial starts
    (those steps are NaN too), so a window shows one trial only.
    """
    out, who = [], []
    width = len(PHASES)
    for log in logs:
        rec = log.rec
        for n, block in enumerate(log.blocks):
            if nets is not None and n not in nets:
                continue
            nxt = np.r_[block.onsets[1:], block.steps]
            for k, (on, kind) in enumerate(zip(block.onsets, block.types, strict=True)):
                if kind not in types:
                    continue
                w = np.full((width, rec.shape[2]), np.nan)
                lo, hi = on - BEFORE, min(on + AFTER + 1, nxt[k], block.steps)
                src = np.arange(max(lo, 0), hi)
                w[src - lo] = rec[n, src]
                out.append(w)
                who.append(n)
    if not out:
        return np.full((0, width, logs[0].rec.shape[2]), np.nan), np.zeros(0, int)
    return np.stack(out), np.array(who)


def at_phase(w: np.ndarray, phase: int, channel: int = REC_DELTA) -> np.ndarray:
    """Channel values of every window at one trial phase."""
    return w[:, phase + BEFORE, channel]


def per_network_mean(w: np.ndarray, who: np.ndarray) -> np.ndarray:
    """[networks with trials, W, R]: each network's mean window (networks weigh equally)."""
    return np.stack([np.nanmean(w[who == n], axis=0) for n in np.unique(who)])


def cell_channels(cells: int) -> slice:
    return slice(REC_FIXED, REC_FIXED + cells)


def monotone_ramp(mean_window: np.ndarray, cells: int, until: int) -> np.ndarray:
    """[cells] True where the mean cell state is strictly monotone over phases 0..until."""
    s = mean_window[BEFORE : BEFORE + until + 1, cell_channels(cells)]
    d = np.diff(s, axis=0)
    return (d > 0).all(axis=0) | (d < 0).all(axis=0)


__all__ = [
    "AFTER",
    "BEFORE",
    "PHASES",
    "REC_DELTA",
    "REC_O",
    "REC_V",
    "at_phase",
    "cell_channels",
    "monotone_ramp",
    "per_network_mean",
    "windows",
]
