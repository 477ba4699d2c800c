"""The training command line: `python -m training ...`, also installed as `peephole-train`.

    python -m training tasks
    python -m training train TASK [--out DIR] [options]      # `train TASK --help`: its options
    python -m training train TASK --show-config              # the settings it would train with
    python -m training export CHECKPOINT [--out DIR]         # export a kept checkpoint
    python -m training reproduce [TASK ...]                  # the papers' set-ups vs ours
    python -m training figures                               # docs/QUALITY.md's plots

Each task has its own `train` parser, so `train TASK --help` lists exactly the options that
apply to it, with the task's defaults, and an option of another task is refused. A user's
mistake is answered with one line on stderr and exit status 2; a refused export with one
line and status 1 (the trained model is kept). The exact command line is recorded in the
model card, so running it again remakes the model.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from app.inference.card import Architecture
from training.errors import UserError
from training.tasks import TASKS, Task

PROG = "python -m training"
ARCH_HELP = {
    "blocks": "memory blocks",
    "cells_per_block": "memory cells per block (they share the block's three gates)",
    "peepholes": "peephole connections: the gates see the cell states",
    "forget_gate": "forget gates (off: the 1997 cell, whose memory never decays)",
    "gate_to_gate": "feed every gate's previous activation to all blocks",
    "input_to_output": "feed the inputs straight to the output layer",
    "bias_to_output": "a bias on the output layer",
    "gate_to_output": "feed the gate activations to the output layer",
    "g": "cell input squashing function",
    "h": "cell output squashing function",
    "output_activation": "output: linear (regression), logistic (binary targets), softmax "
    "(one class per step)",
    "init_range": "initial weights uniform in [-R, R]",
    "gate_bias_step": "staggered negative input/output gate biases: block j starts at "
    "-STEP * (j + 1); 0: none",
    "forget_bias": "initial forget-gate bias (positive: memory open early in training)",
}
TRAIN_HELP = {
    "epochs": ("N", int, "most passes over the training data"),
    "lr": ("X", float, "Adam learning rate"),
    "batch_size": ("N", int, "sequences (stateful tasks: streams) per update"),
    "clip": ("X", float, "gradient-norm clip"),
    "patience": ("N", int, "stop after this many epochs without a better validation score"),
    "weight_decay": ("X", float, "Adam weight decay"),
    "max_minutes": ("M", float, "time budget: stop after the epoch in which it runs out"),
    "chunk_len": ("N", int, "truncated-BPTT chunk in steps (the state runs on across chunks)"),
    "pos_weight": ("X", float, "weight of positive targets in the loss (rare events)"),
}


class Parser(argparse.ArgumentParser):
    """argparse, with a user's mistake answered in ONE line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ------------------------------------------------------------------ number types
def _number(kind: type, low: float | None, strict: bool, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if low is not None and (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _number(int, 0, True, "a positive integer")
positive_float = _number(float, 0.0, True, "a positive number")
non_negative_int = _number(int, 0, False, "a non-negative integer")
non_negative_float = _number(float, 0.0, False, "a non-negative number")
number = _number(float, None, False, "a number")
TYPES = {int: positive_int, float: positive_float}


# ------------------------------------------------------------------ parsers
def build_parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Train peephole LSTMs, check and export them to the model repository.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    sub.add_parser("tasks", help="list the built-in tasks")
    t = sub.add_parser(
        "train",
        help="train on a task and export to the model repository",
        description="Train on a task, keep a checkpoint, check and export. "
        "`train TASK --help` lists the task's options and defaults.",
    )
    tasks = t.add_subparsers(dest="task", required=True, metavar="TASK", parser_class=Parser)
    for task in TASKS.values():
        _add_train(
            tasks.add_parser(
                task.name, help=_literal(task.description), description=task.description
            ),
            task,
        )
    _add_export(sub)
    _add_reproduce(sub)
    _add_figures(sub)
    return p


def _add_train(t: argparse.ArgumentParser, task: Task) -> None:
    d = task.defaults
    t.add_argument(
        "--out",
        type=Path,
        default=Path("models"),
        metavar="DIR",
        help="model repository to write to (default: models)",
    )
    t.add_argument(
        "--name",
        help="model name (default: "
        + ("the CSV file's name" if task.name == "csv" else task.name)
        + ")",
    )
    t.add_argument(
        "--version",
        type=positive_int,
        metavar="N",
        help="version to write (default: the next free one)",
    )
    t.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="seed of the data generator and of the initial weights (default: 0)",
    )
    t.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: tiny data, {d.quick_epochs} epoch(s), seconds",
    )
    t.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        metavar="N",
        help="torch CPU threads; results repeat for a fixed count (default: 1)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--description",
        default="",
        metavar="TEXT",
        help="the card's description (default: the task's)",
    )
    t.add_argument(
        "--show-config",
        action="store_true",
        help="print the settings this command would train with, and exit",
    )
    _add_rule(t)

    h = t.add_argument_group("training (default: the task's setting)")
    for name, (metavar, kind, text) in TRAIN_HELP.items():
        if name == "chunk_len" and not d.stateful or name == "pos_weight" and task.loss != "bce":
            continue  # does not apply to this task: refused as such
        default = getattr(d, name)
        kind_type = non_negative_float if name == "weight_decay" else TYPES[kind]
        h.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind_type,
            metavar=metavar,
            help=f"{text} (default: {'none' if default is None else default})",
        )
    h.add_argument(
        "--schedule",
        choices=("plateau", "cosine", "none"),
        help=f"learning-rate schedule: halve on a validation plateau, cosine decay "
        f"over the epochs, or constant (default: {d.schedule})",
    )

    a = t.add_argument_group("architecture (default: the task's setting)")
    for name, field in Architecture.model_fields.items():
        if name in ("input_size", "output_size"):
            continue
        default = task.architecture.get(name, field.default)
        flag = f"--{name.replace('_', '-')}"
        text = f"{ARCH_HELP[name]} (default: {default})"
        if field.annotation is bool:
            a.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        elif field.annotation is int:
            a.add_argument(flag, type=positive_int, metavar="N", help=text)
        elif field.annotation is float:
            signed = name in ("forget_bias", "gate_bias_step")
            a.add_argument(flag, type=number if signed else positive_float, metavar="X", help=text)
        else:
            a.add_argument(flag, choices=list(field.annotation.__args__), help=text)

    if task.options:
        task.add_arguments(t.add_argument_group(f"{task.name} task"))


def _add_rule(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("export check (ONNX Runtime against the module in float64)")
    g.add_argument(
        "--export-factor",
        type=positive_float,
        default=100.0,
        metavar="F",
        help="refuse when ONNX Runtime's error exceeds F x the float32 PyTorch "
        "module's own error + the tolerance (default: 100)",
    )
    g.add_argument(
        "--export-tolerance",
        type=non_negative_float,
        default=1e-5,
        metavar="X",
        help="error always accepted, whatever float32 rounding explains (default: 1e-5)",
    )


def _add_export(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "export",
        help="check and export a checkpoint (e.g. one whose export was refused)",
        description="Check and export a checkpoint written by `train`.",
    )
    e.add_argument(
        "checkpoint",
        type=Path,
        metavar="CHECKPOINT",
        help="a <name>/<version>.ckpt or <name>/<version>/checkpoint.pt file",
    )
    e.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="model repository (default: the one the checkpoint lies in)",
    )
    e.add_argument("--name", help="model name (default: the checkpoint's)")
    e.add_argument(
        "--version",
        type=positive_int,
        metavar="N",
        help="version (default: the checkpoint's, or the next free one)",
    )
    e.add_argument("--description", metavar="TEXT", help="the card's description")
    e.add_argument(
        "--random-inputs-only",
        action="store_true",
        help="check on random inputs only, without regenerating the task's data",
    )
    _add_rule(e)


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    """`reproduce`: the papers' set-ups vs ours (training/reproduce.py)."""
    r = sub.add_parser(
        "reproduce",
        help="papers' set-ups vs ours: training sequences until "
        "the criterion on fresh data; writes a markdown + JSON table",
    )
    r.add_argument(
        "tasks", nargs="*", metavar="TASK", help="tasks (default: every task with a paper set-up)"
    )
    r.add_argument(
        "--out",
        type=Path,
        default=Path("reproduce"),
        metavar="DIR",
        help="directory for reproduce.md and reproduce.json (default: reproduce)",
    )
    r.add_argument(
        "--setups",
        nargs="*",
        choices=("paper", "modern"),
        help="only these set-ups (default: both)",
    )
    r.add_argument(
        "--max-minutes",
        type=positive_float,
        default=3.0,
        metavar="M",
        help="wall-clock budget per task and set-up (default: 3)",
    )
    r.add_argument(
        "--max-sequences",
        type=positive_int,
        metavar="N",
        help="budget in training units per task and set-up (default: the task's)",
    )
    r.add_argument(
        "--eval-every",
        type=positive_int,
        metavar="N",
        help="training units between criterion checks (default: the task's)",
    )
    r.add_argument(
        "--seed", type=non_negative_int, default=0, metavar="N", help="seed (default: 0)"
    )
    r.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        metavar="N",
        help="torch CPU threads (default: 1)",
    )
    r.add_argument(
        "--quick",
        action="store_true",
        help="smoke mode for tests: short data, 2 checks, tiny budget",
    )
    r.add_argument("--quiet", action="store_true", help="no per-check log lines")


def _add_figures(sub: argparse._SubParsersAction) -> None:
    """`figures`: the docs/QUALITY.md plots from the shipped models (training/figures.py)."""
    f = sub.add_parser("figures", help="plots of the shipped models for docs/QUALITY.md")
    f.add_argument(
        "--models",
        type=Path,
        default=Path("models"),
        metavar="DIR",
        help="model repository (default: models)",
    )
    f.add_argument(
        "--out",
        type=Path,
        default=Path("docs/img/quality"),
        metavar="DIR",
        help="PNG directory (default: docs/img/quality)",
    )
    f.add_argument(
        "--reproduce",
        type=Path,
        nargs="*",
        metavar="JSON",
        default=[Path("docs/quality/a/reproduce.json"), Path("docs/quality/b/reproduce.json")],
        help="reproduce.json files whose curves to plot (missing ones skipped)",
    )
    f.add_argument(
        "--seed",
        type=non_negative_int,
        default=123,
        metavar="N",
        help="seed of the fresh data shown (default: 123)",
    )


def _not_applicable(extras: list[str], task: str | None) -> str:
    """Why options were not recognised: another task's option, or no option at all."""
    flags = [a.split("=")[0] for a in extras if a.startswith("--")]
    for flag in flags:
        owners = [
            name for name, sub in _task_parsers().items() if flag in sub._option_string_actions
        ]
        if owners and task:
            return f"{flag} does not apply to task {task} (it is an option of: {', '.join(owners)})"
    return f"unrecognized arguments: {' '.join(extras)}"


def _task_parsers() -> dict[str, argparse.ArgumentParser]:
    parsers = {}
    for task in TASKS.values():
        p = Parser(prog=f"{PROG} train {task.name}")
        _add_train(p, task)
        parsers[task.name] = p
    return parsers


def _literal(text: str) -> str:
    """argparse %-formats help strings (not descriptions): a task's "%" must stay a percent."""
    return text.replace("%", "%%")


# ------------------------------------------------------------------ commands
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["reproduce", "rivest2010"]:  # the lnsc experiment has its own options
        from training.lnsc.reproduce import main as rivest2010_main

        return rivest2010_main(argv[2:])
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        parser.exit(
            2,
            f"{PROG} {args.command}: error: "
            f"{_not_applicable(extras, getattr(args, 'task', None))} (see --help)\n",
        )
    command = shlex.join(["python", "-m", "training", *argv])
    try:
        if args.command == "tasks":
            width = max(len(n) for n in TASKS)
            for name, task in TASKS.items():
                print(f"{name:<{width}}  {task.description}")
            return 0
        if args.command == "reproduce":
            from training.reproduce import main as reproduce_main

            return reproduce_main(args, command=command)
        if args.command == "figures":
            from training.figures import main as figures_main

            return figures_main(args)
        if args.command == "export":
            return _export(args)
        return _train(args, command)
    except UserError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2


def train_config(args: argparse.Namespace, command: str = ""):
    """The TrainConfig a parsed `train TASK ...` command line stands for."""
    from training.train import TrainConfig
    from training.verify import CheckRule

    task = TASKS[args.task]
    arch_fields = set(Architecture.model_fields) - {"input_size", "output_size"}
    return TrainConfig(
        task=args.task,
        out=args.out,
        name=args.name,
        version=args.version,
        seed=args.seed,
        quick=args.quick,
        overrides={
            k: v for k in (*TRAIN_HELP, "schedule") if (v := getattr(args, k, None)) is not None
        },
        arch={k: v for k in arch_fields if (v := getattr(args, k, None)) is not None},
        task_options={k: getattr(args, k) for k in task.options},
        threads=args.threads,
        progress=not args.no_progress,
        description=args.description,
        rule=CheckRule(factor=args.export_factor, floor=args.export_tolerance),
        command=command,
    )


def show_config(args: argparse.Namespace) -> dict[str, Any]:
    """The settings `train` would use, resolved: task defaults with the user's values."""
    from training.train import architecture, resolve

    cfg = train_config(args)
    task = TASKS[cfg.task]
    arch = {
        k: f.default
        for k, f in Architecture.model_fields.items()
        if k not in ("input_size", "output_size")
    }
    return {
        "task": cfg.task,
        "seed": cfg.seed,
        "quick": cfg.quick,
        "out": str(cfg.out),
        "name": cfg.name or task.default_name(cfg.task_options),
        "version": cfg.version,
        "threads": cfg.threads,
        "hyperparameters": asdict(resolve(cfg, task)),
        "architecture": {**arch, **architecture(cfg, task)},
        "task_options": cfg.task_options,
        "export_check": {"factor": cfg.rule.factor, "tolerance": cfg.rule.floor},
        "loss": task.loss,
        "monitor": task.monitor,
    }


def _train(args: argparse.Namespace, command: str) -> int:
    from training.checkpoint import check_target
    from training.train import resolve, train
    from training.verify import ExportMismatch

    if args.show_config:
        print(json.dumps(show_config(args), indent=2))
        return 0
    cfg = train_config(args, command)
    resolve(cfg, TASKS[cfg.task])  # bad values: refused before any work
    check_target(cfg.out, cfg.name or TASKS[cfg.task].default_name(cfg.task_options), cfg.version)
    try:
        result = train(cfg)
    except ExportMismatch as e:
        return _refused(e, e.checkpoint)
    final = result.metrics["final"]
    print(
        json.dumps(
            {
                "model": str(result.version_dir),
                "solved": final["solved"],
                "best_epoch": final["best_epoch"],
                "stopped": final["stopped"],
                "test": final["test"],
            },
            indent=2,
            default=str,
        )
    )
    return 0


def _refused(e: Any, path: Path) -> int:
    """One line: the largest error, where the model is kept, and the command to export it."""
    tol = float(f"{e.largest_error * 1.5:.1g}")
    print(
        f"{PROG}: export refused: {e}; the trained model is kept in {path}; to export it "
        f"anyway: python -m training export {shlex.quote(str(path))} --export-tolerance "
        f"{tol:g}",
        file=sys.stderr,
    )
    return 1


def _export(args: argparse.Namespace) -> int:
    from training.checkpoint import CHECKPOINT_FILE, Checkpoint
    from training.export import CHECKPOINT_SUFFIX
    from training.verify import CheckRule, ExportMismatch

    path: Path = args.checkpoint
    ckpt = Checkpoint.load(path)
    repo = args.out
    if repo is None:
        if path.suffix == CHECKPOINT_SUFFIX:  # <repo>/<name>/<version>.ckpt
            repo = path.resolve().parent.parent
        elif path.name == CHECKPOINT_FILE:  # <repo>/<name>/<version>/checkpoint.pt
            repo = path.resolve().parent.parent.parent
        else:
            raise UserError("--out DIR is needed: the checkpoint lies outside a repository")
    rule = CheckRule(factor=args.export_factor, floor=args.export_tolerance)
    inputs = ckpt.random_inputs() if args.random_inputs_only else ckpt.task_inputs()
    try:
        vdir = ckpt.export(
            repo,
            path,
            rule=rule,
            inputs=inputs,
            name=args.name,
            version=args.version,
            description=args.description,
        )
    except ExportMismatch as e:
        return _refused(e, path)
    print(json.dumps({"model": str(vdir)}))
    return 0
