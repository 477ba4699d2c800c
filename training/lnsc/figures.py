"""The Rivest 2010 figures (matplotlib, Agg) from one reproduction run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.lnsc import analysis as A  # noqa: E402
from training.lnsc.experiment import BlockLog, MasterResult  # noqa: E402
from training.lnsc.protocol import NORMAL, PROBE_DELAYS, TRAIN_DELAY  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _per_trial(log: BlockLog, phase: int) -> np.ndarray:
    """[trials] delta at one trial phase, mean over networks, by trial number."""
    w, who = A.windows([log], (NORMAL,))
    rank = np.zeros(len(who), int)
    for n in np.unique(who):
        idx = np.nonzero(who == n)[0]
        rank[idx] = np.arange(len(idx))
    v = A.at_phase(w, phase)
    return np.array(
        [
            np.nanmean(v[rank == k]) if np.isfinite(v[rank == k]).any() else np.nan
            for k in range(rank.max() + 1)
        ]
    )


def delta_learning(
    path: Path, initial: list[BlockLog], m: dict[str, Any], master: MasterResult
) -> str:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    offset = 0
    for log in initial:
        cs, us = _per_trial(log, 0), _per_trial(log, TRAIN_DELAY)
        k = np.arange(len(cs)) + offset
        a.plot(k, cs, "o-", ms=3, color="tab:blue", label="at the CS" if not offset else None)
        a.plot(k, us, "o-", ms=3, color="tab:red", label="at the US" if not offset else None)
        offset += len(cs)
        a.axvline(offset - 0.5, color="0.7", lw=0.8)
    a.set(
        xlabel="trial (InitialTraining blocks 0 and 1)",
        ylabel="delta, mean over networks",
        title="Naive networks: the first two blocks",
    )
    a.legend()
    blocks = np.arange(len(master.delta_cs))
    kept = master.kept
    groups = [("all", np.ones(master.nets.n, bool), "-")]
    if kept.any():
        groups.append(("Kept", kept, "--"))
    for name, rows, ls in groups:  # medians: one diverging network would swamp a mean
        for where, values, color in (("CS", master.delta_cs, "tab:blue"),
                                     ("US", master.delta_us, "tab:red")):  # fmt: skip
            b.plot(blocks, np.nanmedian(values[:, rows], axis=1), color=color, ls=ls, lw=1,
                   label=f"at the {where}, {int(rows.sum())} {name}")  # fmt: skip
    b.axhline(0, color="0.6", lw=0.8)
    b.set(
        xlabel="MasterTraining block",
        ylabel="delta: block mean, median over networks",
        title="Across learning",
    )
    b.legend(fontsize=8)
    _save(fig, path)
    return (
        "TD error delta at the CS and at the US: per trial in the first two blocks of naive "
        "networks (left), per block across MasterTraining (right)."
    )


def probes(path: Path, m: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for key, label, color, us in (
        ("trained_window_delta", f"normal (US at step {TRAIN_DELAY})", "k", TRAIN_DELAY),
        (
            "probe_early_window_delta",
            f"early probe (step {PROBE_DELAYS[0]})",
            "tab:green",
            PROBE_DELAYS[0],
        ),
        (
            "probe_late_window_delta",
            f"late probe (step {PROBE_DELAYS[1]})",
            "tab:purple",
            PROBE_DELAYS[1],
        ),
    ):
        v = m.get(key)
        if v is None:
            continue
        ax.plot(A.PHASES, v, "o-", ms=3, color=color, label=label)
        ax.axvline(us, color=color, lw=0.8, ls=":")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set(
        xlabel="trial step (200 ms; CS at 0)",
        ylabel="delta, mean over Kept networks",
        title="Probe trials after learning (test blocks 980, 990, 1000)",
    )
    ax.legend(fontsize=8)
    _save(fig, path)
    return "TD error around normal trials and early (500 ms) / late (1500 ms) US probes."


def omission(path: Path, m: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for key, label, color in (
        ("rewarded_window_delta", "rewarded", "k"),
        ("omission_window_delta", "US omitted", "tab:orange"),
    ):
        v = m.get(key)
        if v is not None:
            ax.plot(A.PHASES, v, "o-", ms=3, color=color, label=label)
    ax.axvline(TRAIN_DELAY, color="0.5", lw=0.8, ls=":")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set(
        xlabel="trial step (200 ms; CS at 0)",
        ylabel="delta, mean over Kept networks",
        title="Omission test block after MasterTraining",
    )
    ax.legend(fontsize=8)
    _save(fig, path)
    return "The dip at an omitted US (omission test block run after MasterTraining)."


def time_representation(path: Path, master: MasterResult) -> str:
    kept = np.nonzero(master.kept)[0][:4]
    cells = master.nets.dims.cells
    logs = [log for log in master.saved if log.kind == "train"]
    n = max(1, len(kept))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    for ax, net in zip(axes[0], kept, strict=False):
        w, _ = A.windows(logs, (NORMAL,), np.array([net]))
        mean = np.nanmean(w, axis=0)
        for c in range(cells):
            s = mean[:, A.REC_FIXED + c]
            if np.nanmax(np.abs(s)) > 25:  # saturated: h'(s) = 0, a constant output
                ax.plot([], [], " ", label=f"s{c // 2 + 1}{c % 2 + 1} ~ {np.nanmean(s):.0f} (off)")
                continue
            ax.plot(A.PHASES, s, label=f"s{c // 2 + 1}{c % 2 + 1}")
        ax.plot(A.PHASES, mean[:, A.REC_O], "k--", lw=1, label="o")
        ax.axvline(TRAIN_DELAY, color="0.5", lw=0.8, ls=":")
        _, _, idx = master.nets.ids[net]
        ax.set(title=f"network {idx}", xlabel="trial step")
    axes[0][0].set_ylabel("cell state (mean over trials)")
    for ax in axes[0]:
        ax.legend(fontsize=7)
    _save(fig, path)
    return (
        "Memory-cell states over a normal trial after learning (blocks 980-1000) for the "
        "first Kept networks; dashed: the US prediction o. Cells saturated beyond |s| > 25 "
        "(h' = 0: a constant output) are listed, not drawn."
    )


def trials_to_criterion(path: Path, m: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    series = {"lnsc (modulated, quirk traces)": m["trials_to_criterion"]}
    for name, v in m["variants"].items():
        series[name] = np.asarray(v["trials_to_criterion"])
    for label, t in series.items():
        t = np.asarray(t)
        n = len(t)
        done = np.sort(t[t >= 0])
        if len(done):
            ax.step(
                np.r_[0, done],
                np.r_[0, np.arange(1, len(done) + 1)] / n,
                where="post",
                label=f"{label}: {len(done)}/{n}",
            )
        else:
            ax.plot([], [], label=f"{label}: 0/{n}")
    ax.set(
        xlabel="training trials before the criterion run",
        ylabel="fraction of networks",
        title="Trials to criterion over networks",
    )
    ax.legend(fontsize=8)
    _save(fig, path)
    return "Fraction of networks that met the criterion within a number of training trials."


def write_all(
    img: Path,
    initial: list[BlockLog],
    master: MasterResult,
    post: dict[str, BlockLog],
    variants: dict[str, MasterResult],
    m: dict[str, Any],
) -> dict[str, str]:
    img.mkdir(parents=True, exist_ok=True)
    out = {"delta_learning.png": delta_learning(img / "delta_learning.png", initial, m, master)}
    if master.kept.any():
        out["probes.png"] = probes(img / "probes.png", m)
        out["omission.png"] = omission(img / "omission.png", m)
        out["time_representation.png"] = time_representation(
            img / "time_representation.png", master
        )
    out["trials_to_criterion.png"] = trials_to_criterion(img / "trials_to_criterion.png", m)
    del post, variants
    return out
