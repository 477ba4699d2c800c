"""`python -m training reproduce [TASK ...]`: the papers' set-ups against ours, on fresh data.

For every task and set-up this trains a fresh network on an endless stream of freshly
generated training data, checks the paper's success criterion every `eval_every` training
sequences on FRESH data (a new draw each time, never trained on), and stops when it holds or
when the budget (`--max-minutes`, `--max-sequences`) runs out. After stopping, the network
is scored once more on a separate fresh test set (another seed). The table says how many
training sequences it took, or "not reached within N" when the budget ran out: a paper
set-up that does not converge here is reported, not hidden.

Set-ups:
- `paper`: the paper's architecture and initialisation (1997 LSTM: no forget gate, no
  peepholes, g in [-2, 2], h in [-1, 1], staggered negative gate biases; Gers 2002 / lnsc:
  peepholes and forget gates) and online learning: batch 1, plain SGD, the paper's learning
  rate where known (`lr_source` says so, or that it is our assumption). Stateful tasks are
  trained on one continuous stream with an update every `chunk` steps (truncated BPTT; the
  papers update after every step with a truncated RTRL gradient).
- `modern`: Adam, minibatches, gradient clipping and a schedule: plateau (halve the
  learning rate when the fresh-data loss has not improved for 10 checks, down to lr/100) or
  cosine over a fixed horizon.

Units counted: strings / sequences (stateless tasks), spikes (MSD) and stream steps (trace
conditioning), both summed over the parallel streams, windows of 100 samples (Mackey-Glass).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.errors import UserError
from training.losses import Objective
from training.model import PeepholeConfig, PeepholeLSTM
from training.step import train_step
from training.tasks import TASKS, Reproduction, Setup, Split

PLATEAU_CHECKS = 10  # stalled criterion checks before the modern set-up halves its rate


def specs(quick: bool = False) -> dict[str, Reproduction]:
    """Every task's paper and modern set-ups (each declared beside its task)."""
    return {t.name: r for t in TASKS.values() if (r := t.reproduction(quick)) is not None}


# ----------------------------------------------------------------- training
def _optimizer(model: PeepholeLSTM, s: Setup) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=s.lr)
    return torch.optim.Adam(model.parameters(), lr=s.lr)


def run_one(
    spec: Reproduction,
    setup: Setup,
    *,
    seed: int,
    max_minutes: float,
    max_units: int | None = None,
    eval_every: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train one set-up until the criterion holds on fresh data or the budget runs out."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    check_rng = np.random.default_rng(seed + 1_000_003)  # fresh draws for the checks
    test_rng = np.random.default_rng(seed + 2_000_003)  # the final fresh test set
    eval_every = eval_every or spec.eval_every
    max_units = max_units or spec.max_units
    sample_x = spec.sample or spec.stream
    probe = sample_x(np.random.default_rng(0), 2 if not spec.stateful else 200)
    model = PeepholeLSTM(
        PeepholeConfig(input_size=probe.x.shape[2], output_size=probe.y.shape[2], **setup.arch)
    )
    opt = _optimizer(model, setup)
    t0 = time.perf_counter()
    units = updates = 0
    next_check = eval_every
    curve: list[dict[str, Any]] = []
    solved_at: int | None = None
    best_loss, stale = math.inf, 0
    state = None
    # Stateful tasks: one (or `batch`) continuous stream(s), regenerated in long pieces; the
    # state runs on across pieces as if the stream never ended.
    piece: Split | None = None
    pos = 0

    def budget_left() -> bool:
        return units < max_units and (time.perf_counter() - t0) < 60 * max_minutes

    while budget_left():
        if spec.stateful:
            if piece is None or pos >= piece.x.shape[1]:
                parts = [spec.stream(rng, 20_000) for _ in range(setup.batch)]
                piece = Split(
                    np.concatenate([p.x for p in parts]),
                    np.concatenate([p.y for p in parts]),
                    np.concatenate([p.mask for p in parts]),
                )
                pos = 0
            sl = slice(pos, pos + setup.chunk)
            xb, yb, mb = (torch.from_numpy(a[:, sl]) for a in (piece.x, piece.y, piece.mask))
            pos += setup.chunk
            # Summed over the parallel streams: spikes, or stream steps.
            step_units = int(mb.sum()) if spec.unit == "spikes" else mb.numel()
        else:
            batch = spec.sample(rng, setup.batch)
            xb, yb, mb = (torch.from_numpy(a) for a in (batch.x, batch.y, batch.mask))
            step_units = setup.batch
        objective = (
            Objective("sse") if setup.objective == "sse" else Objective(spec.loss, setup.pos_weight)
        )
        _, _, new_state = train_step(
            model, opt, objective, xb, yb, mb, state if spec.stateful else None, setup.clip
        )
        updates += 1
        units += step_units
        if setup.cosine:
            frac = min(1.0, units / setup.cosine)
            for g in opt.param_groups:
                g["lr"] = setup.lr * (1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * frac)))
        if spec.stateful:
            state = new_state
        if units >= next_check:
            next_check += eval_every
            c = spec.check(model, check_rng)
            model.train()
            curve.append(
                {
                    "units": units,
                    "seconds": round(time.perf_counter() - t0, 2),
                    "metric": c.metric,
                    "loss": c.loss,
                    "ok": c.ok,
                }
            )
            if log:
                log(
                    f"{spec.name}/{setup.name}: {units} {spec.unit}, {spec.metric_name} "
                    f"{c.metric:.4g}, loss {c.loss:.4g}"
                )
            if not math.isfinite(c.loss):
                break
            if c.ok:
                solved_at = units
                break
            if setup.plateau:
                # Patient, with a floor: a net still on its initial plateau (MSD at chance
                # for its first tens of thousands of spikes) must keep a usable rate.
                if c.loss < best_loss * 0.99:
                    best_loss, stale = c.loss, 0
                else:
                    stale += 1
                    if stale >= PLATEAU_CHECKS:
                        for g in opt.param_groups:
                            g["lr"] = max(g["lr"] * 0.5, setup.lr * 1e-2)
                        stale = 0
    wall = time.perf_counter() - t0
    final = (spec.final_check or spec.check)(model, test_rng)
    return {
        "task": spec.name,
        "setup": setup.name,
        "unit": spec.unit,
        "solved_at": solved_at,
        "units_trained": units,
        "updates": updates,
        "budget": {"max_units": max_units, "max_minutes": max_minutes},
        "seconds": round(wall, 1),
        "test": {"ok": final.ok, spec.metric_name: final.metric, **final.detail},
        "figure": spec.figure,
        "criterion": spec.criterion,
        "optimizer": setup.optimizer,
        "lr": setup.lr,
        "lr_source": setup.lr_source,
        "objective": setup.objective,
        "batch": setup.batch,
        "clip": setup.clip,
        "architecture": setup.arch,
        "schedule": (
            f"cosine over {setup.cosine:,} {spec.unit}"
            if setup.cosine
            else f"plateau (halve after {PLATEAU_CHECKS} stalled checks, floor lr/100)"
            if setup.plateau
            else "constant"
        ),
        "curve": curve,
        "seed": seed,
    }


# -------------------------------------------------------------------- table
def _units(n: int) -> str:
    return f"{n:,}"


def table_markdown(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table."""
    lines = [
        "| task | set-up | training until the criterion | test on fresh data | paper's figure |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r["solved_at"] is not None:
            until = f"{_units(r['solved_at'])} {r['unit']}"
        else:
            until = f"not reached within {_units(r['units_trained'])} {r['unit']}"
        t = r["test"]
        metric = {k: v for k, v in t.items() if k not in ("ok",)}
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in metric.items())
        setup = (
            f"{r['setup']}: {r['optimizer']} lr {r['lr']:g}, batch {r['batch']}"
            + (f", clip {r['clip']:g}" if r["clip"] else "")
            + (", summed squared error" if r["objective"] == "sse" else "")
            + (f", {r['schedule']}" if r["schedule"].startswith("cosine") else "")
            + f"; {_arch(r['architecture'])}"
        )
        lines.append(
            f"| {r['task']} | {setup} | {until} ({r['seconds']:.0f} s) | "
            f"{'met' if t['ok'] else 'not met'}: {shown} | {r['figure']} |"
        )
    return "\n".join(lines) + "\n"


def _arch(a: dict[str, Any]) -> str:
    """Blocks x cells and the cell's distinguishing knobs, short."""
    parts = [f"{a.get('blocks', 2)}x{a.get('cells_per_block', 1)}"]
    if a.get("forget_gate") is False:
        parts.append("no forget gate")
    if a.get("peepholes") is False:
        parts.append("no peepholes")
    parts.append(f"g {a.get('g', 'logistic2')}, h {a.get('h', 'logistic2')}")
    return " ".join(parts[:1]) + (", " + ", ".join(parts[1:]) if parts[1:] else "")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main(args: argparse.Namespace, command: str = "") -> int:
    """The `reproduce` subcommand: run, then write reproduce.md and reproduce.json."""
    torch.set_num_threads(args.threads)
    all_specs = specs(quick=args.quick)
    tasks = args.tasks or list(all_specs)
    unknown = [t for t in tasks if t not in all_specs]
    if unknown:
        raise UserError(
            f"unknown task(s) {', '.join(unknown)}; tasks with a paper set-up: "
            f"{', '.join(all_specs)}"
        )
    max_units = args.max_sequences
    eval_every = args.eval_every
    if args.quick:  # smoke mode: two checks within a tiny budget
        max_units = max_units or 8
        eval_every = eval_every or max(1, max_units // 2)
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in tasks:
        spec = all_specs[name]
        for setup in (spec.paper, spec.modern):
            if args.setups and setup.name not in args.setups:
                continue
            row = run_one(
                spec,
                setup,
                seed=args.seed,
                max_minutes=args.max_minutes,
                max_units=max_units,
                eval_every=eval_every,
                log=None if args.quiet else lambda m: print(m, flush=True),
            )
            rows.append(row)
            (out / "reproduce.json").write_text(
                json.dumps({"command": command, "rows": rows}, indent=2) + "\n"
            )
            (out / "reproduce.md").write_text(f"Made by `{command}`\n\n" + table_markdown(rows))
            print(table_markdown([row]).splitlines()[-1], flush=True)
    print(f"wrote {out / 'reproduce.md'} and {out / 'reproduce.json'}")
    return 0
