"""`python -m training tasks` / `python -m training train TASK --out DIR [...]`.

Every option of `train` defaults to the task's setting (shown by `train --help` as None);
the exact command line is recorded in the model card, so re-running it remakes the model.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from app.inference.card import Architecture
from training.tasks import TASKS

ARCH_INT = ("blocks", "cells_per_block")
ARCH_FLOAT = ("init_range", "gate_bias_step", "forget_bias")
ARCH_BOOL = ("peepholes", "forget_gate", "gate_to_gate", "input_to_output", "bias_to_output",
             "gate_to_output")
ARCH_CHOICE = {"g": ("tanh", "logistic2", "logistic4", "identity"),
               "h": ("tanh", "logistic2", "logistic4", "identity"),
               "output_activation": ("linear", "logistic", "softmax")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training",
                                description="Train peephole LSTMs on built-in tasks.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("tasks", help="list the built-in tasks")

    t = sub.add_parser("train", help="train on a task and export to the model repository")
    t.add_argument("task", choices=list(TASKS), help="task name (see `tasks`)")
    t.add_argument("--out", type=Path, default=Path("models"), help="model repository")
    t.add_argument("--name", help="model name (default: the task name)")
    t.add_argument("--version", type=int, help="version (default: the next free one)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quick", action="store_true",
                   help="smoke-test mode: tiny data, one or two epochs (seconds)")
    t.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (results are repeatable for a fixed count)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--description", default="", help="card description")
    t.add_argument("--export-tolerance", type=float,
                   help="max ONNX-vs-PyTorch error accepted by the export check "
                        "(default: the exporter's, 1e-5)")

    h = t.add_argument_group("training (default: the task's setting)")
    h.add_argument("--epochs", type=int)
    h.add_argument("--lr", type=float, help="Adam learning rate")
    h.add_argument("--batch-size", type=int)
    h.add_argument("--clip", type=float, help="gradient-norm clip")
    h.add_argument("--patience", type=int, help="early-stopping patience (epochs)")
    h.add_argument("--weight-decay", type=float)
    h.add_argument("--schedule", choices=("plateau", "cosine", "none"))
    h.add_argument("--chunk-len", type=int, help="truncated-BPTT chunk (stateful tasks)")
    h.add_argument("--pos-weight", type=float, help="weight of positive targets (bce tasks)")

    a = t.add_argument_group("architecture (default: the task's setting)")
    for name in ARCH_INT:
        a.add_argument(f"--{name.replace('_', '-')}", type=int)
    for name in ARCH_FLOAT:
        a.add_argument(f"--{name.replace('_', '-')}", type=float)
    for name in ARCH_BOOL:
        a.add_argument(f"--{name.replace('_', '-')}", action=argparse.BooleanOptionalAction)
    for name, choices in ARCH_CHOICE.items():
        a.add_argument(f"--{name.replace('_', '-')}", choices=choices)

    for task in TASKS.values():
        task.add_arguments(t)
    _add_reproduce(sub)
    _add_figures(sub)
    return p


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    """`reproduce`: the papers' set-ups vs ours (training/reproduce.py)."""
    r = sub.add_parser("reproduce", help="papers' set-ups vs ours: training sequences until "
                       "the criterion on fresh data; writes a markdown + JSON table")
    r.add_argument("tasks", nargs="*", help="tasks (default: all reference tasks)")
    r.add_argument("--out", type=Path, default=Path("reproduce"),
                   help="directory for reproduce.md and reproduce.json")
    r.add_argument("--setups", nargs="*", choices=("paper", "modern"),
                   help="only these set-ups (default: both)")
    r.add_argument("--max-minutes", type=float, default=3.0,
                   help="wall-clock budget per task and set-up (default 3)")
    r.add_argument("--max-sequences", type=int,
                   help="budget in training units per task and set-up (default: the task's)")
    r.add_argument("--eval-every", type=int,
                   help="training units between criterion checks (default: the task's)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--quick", action="store_true",
                   help="smoke mode for tests: short data, 2 checks, tiny budget")
    r.add_argument("--quiet", action="store_true", help="no per-check log lines")


def _add_figures(sub: argparse._SubParsersAction) -> None:
    """`figures`: the docs/QUALITY.md plots from the shipped models (training/figures.py)."""
    f = sub.add_parser("figures", help="plots of the shipped models for docs/QUALITY.md")
    f.add_argument("--models", type=Path, default=Path("models"), help="model repository")
    f.add_argument("--out", type=Path, default=Path("docs/img/quality"), help="PNG directory")
    f.add_argument("--reproduce", type=Path, nargs="*",
                   default=[Path("docs/quality/a/reproduce.json"),
                            Path("docs/quality/b/reproduce.json")],
                   help="reproduce.json files whose curves to plot (missing ones skipped)")
    f.add_argument("--seed", type=int, default=123, help="seed of the fresh data shown")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["reproduce", "rivest2010"]:  # the lnsc experiment has its own options
        from training.lnsc.reproduce import main as rivest2010_main

        return rivest2010_main(argv[2:])
    args = build_parser().parse_args(argv)
    if args.command == "tasks":
        width = max(len(n) for n in TASKS)
        for name, task in TASKS.items():
            print(f"{name:<{width}}  {task.description}")
        return 0
    if args.command == "reproduce":
        from training.reproduce import main as reproduce_main

        return reproduce_main(args, command=shlex.join(["python", "-m", "training", *argv]))
    if args.command == "figures":
        from training.figures import main as figures_main

        return figures_main(args)

    from training.train import TrainConfig, train  # torch import only when training

    arch_fields = {f for f in Architecture.model_fields} - {"input_size", "output_size"}
    arch = {k: getattr(args, k) for k in arch_fields if getattr(args, k, None) is not None}
    task_options = {k: getattr(args, k) for k in ("csv_path", "features", "targets", "horizon",
                                                  "window", "val_fraction")
                    if args.task == "csv" and getattr(args, k, None) is not None}
    cfg = TrainConfig(
        task=args.task, out=args.out, name=args.name, seed=args.seed, quick=args.quick,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, clip=args.clip,
        patience=args.patience, weight_decay=args.weight_decay, schedule=args.schedule,
        chunk_len=args.chunk_len, pos_weight=args.pos_weight, arch=arch,
        task_options=task_options, threads=args.threads,
        progress=not args.no_progress, description=args.description, version=args.version,
        export_tolerance=args.export_tolerance,
        command=shlex.join(["python", "-m", "training", *argv]),
    )
    result = train(cfg)
    final = result.metrics["final"]
    summary = {"model": str(result.version_dir), "solved": final["solved"],
               "best_epoch": final["best_epoch"], "test": final["test"]}
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
