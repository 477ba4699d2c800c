"""The training CLI: every user mistake is one line and exit status 2; help on every flag;
--show-config; the console script; a quick training of every task end to end."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import pytest

from app.inference.card import ModelCard, sha256_file
from tests.training.tasks.test_csv_series import real_series
from training.cli import build_parser, main
from training.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=240)  # fmt: skip


def _write_csv(path: Path) -> Path:
    path.write_text("time,a,b\n" + "".join(f"{i},{i % 7},{i % 5 + 3}\n" for i in range(300)))
    return path


def test_tasks_lists_every_task():
    out = _run("tasks")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(TASKS)
    assert all(len(line.split(None, 1)[1]) > 20 for line in lines)


def _mistakes(tmp: Path) -> dict[str, tuple[list[str], str]]:
    csv = _write_csv(tmp / "s.csv")
    (tmp / "binary.csv").write_bytes(b"\xff\xfe\x00a,b\n")
    (tmp / "repo" / "adding" / "1").mkdir(parents=True)
    return {
        "missing file": (
            ["train", "csv", "--csv", str(tmp / "nope.csv"), "--features", "a"],
            "no such file",
        ),
        "unreadable file": (
            ["train", "csv", "--csv", str(tmp / "binary.csv"), "--features", "a"],
            "not UTF-8",
        ),
        "a directory": (["train", "csv", "--csv", str(tmp), "--features", "a"], "is a directory"),
        "unknown column": (
            ["train", "csv", "--csv", str(csv), "--features", "a,zz"],
            "no column 'zz'; its columns are: time, a, b",
        ),
        "missing --csv": (["train", "csv", "--features", "a"], "needs --csv"),
        "missing --features": (["train", "csv", "--csv", str(csv)], "needs --features"),
        "another task's option": (
            ["train", "adding", "--csv", str(csv)],
            "--csv does not apply to task adding (it is an option of: csv)",
        ),
        "a stateful option": (
            ["train", "adding", "--chunk-len", "5"],
            "--chunk-len does not apply to task adding",
        ),
        "a bad number": (["train", "adding", "--epochs", "ten"], "'ten' is not a positive integer"),
        "a negative rate": (["train", "adding", "--lr", "-1"], "'-1' is not a positive number"),
        "a bad horizon": (
            ["train", "csv", "--csv", str(csv), "--features", "a", "--horizon", "-2"],
            "--horizon -2",
        ),
        "a bad choice": (
            ["train", "csv", "--csv", str(csv), "--features", "a", "--missing", "guess"],
            "invalid choice: 'guess'",
        ),
        "unknown task": (["train", "no-such-task"], "invalid choice: 'no-such-task'"),
        "no task": (["train"], "required: TASK"),
        "taken version": (
            ["train", "adding", "--out", str(tmp / "repo"), "--version", "1"],
            "already exists",
        ),
        "bad name": (["train", "adding", "--name", "My Model"], "--name 'My Model'"),
        "bad checkpoint": (["export", str(csv)], "not a readable checkpoint"),
        "unknown reproduce task": (["reproduce", "no-such", "--quick"], "unknown task(s) no-such"),
        "no model repository": (
            ["figures", "--models", str(tmp / "none"), "--out", str(tmp)],
            "not a model repository",
        ),
    }


def test_every_mistake_is_one_line_and_status_2(tmp_path, capsys):
    for what, (argv, message) in _mistakes(tmp_path).items():
        with pytest.raises(SystemExit) as exit_:
            sys.exit(main(argv))
        err = capsys.readouterr().err
        assert exit_.value.code == 2, what
        assert len(err.strip().splitlines()) == 1, (what, err)
        assert message in err, (what, err)
        assert "Traceback" not in err


def test_a_mistake_through_the_real_command(tmp_path):
    out = _run("train", "csv", "--csv", str(tmp_path / "nope.csv"), "--features", "a")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == (f"python -m training train: error: {tmp_path / 'nope.csv'}: "
                                  "no such file")  # fmt: skip


def test_every_flag_has_help():
    def walk(parser: argparse.ArgumentParser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from walk(sub)
            elif action.option_strings or action.dest not in ("command", "task"):
                yield parser.prog, action

    seen = 0
    for prog, action in walk(build_parser()):
        seen += 1
        assert action.help and len(action.help) > 8, (prog, action.dest)
    assert seen > 200  # every task's train options, export, reproduce, figures


def test_every_help_page_prints():
    """argparse formats help strings with %: one literal percent in a task's description broke
    `train --help`."""

    def walk(parser: argparse.ArgumentParser, argv: list[str]):
        yield argv
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*argv, name])

    pages = 0
    for argv in walk(build_parser(), []):
        if argv[:2] == ["reproduce", "rivest2010"]:
            continue  # its own parser, below
        with pytest.raises(SystemExit) as done:
            main([*argv, "--help"])
        assert done.value.code == 0, argv
        pages += 1
    assert pages > len(TASKS)


def test_show_config_prints_the_resolved_settings_without_training(tmp_path, capsys):
    assert main(["train", "msd", "--out", str(tmp_path / "r"), "--lr", "0.1", "--blocks", "3",
                 "--no-peepholes", "--show-config"]) == 0  # fmt: skip
    cfg = json.loads(capsys.readouterr().out)
    task = TASKS["msd"]
    assert cfg["hyperparameters"]["lr"] == 0.1
    assert cfg["hyperparameters"]["chunk_len"] == task.defaults.chunk_len
    assert cfg["architecture"]["blocks"] == 3 and cfg["architecture"]["peepholes"] is False
    assert cfg["architecture"]["g"] == "tanh"  # the task's, over the card default
    assert cfg["export_check"] == {"factor": 100.0, "tolerance": 1e-5}
    assert not (tmp_path / "r").exists()
    assert main(["train", "csv", "--csv", "sunspots.csv", "--features", "SUNACTIVITY",
                 "--show-config"]) == 0  # fmt: skip
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["name"] == "sunspots" and cfg["task_options"]["missing"] == "error"
    assert cfg["hyperparameters"]["max_minutes"] == 30.0


def test_console_script_is_declared_and_runs(capsys):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["peephole-train"].split(":")
    entry = getattr(import_module(module), func)
    assert entry is main
    assert entry(["tasks"]) == 0 and "mackey-glass" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_quick_training_through_the_cli(task, tmp_path):
    extra: list[str] = []
    if task == "csv":
        extra = [
            "--csv",
            str(real_series(tmp_path, "nile")),
            "--features",
            "volume",
            "--time",
            "year",
            "--window",
            "40",
        ]
    out = _run("train", task, "--out", str(tmp_path / "repo"), "--quick", "--no-progress",
               "--seed", "3", *extra)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    name = "nile" if task == "csv" else task
    vdir = tmp_path / "repo" / name / "1"
    for f in ("model.onnx", "model.json", "metrics.json", "training_curve.png", "checkpoint.pt"):
        assert (vdir / f).is_file(), f
    card = ModelCard.model_validate_json((vdir / "model.json").read_text())
    assert card.name == name and card.version == 1 and card.task == task
    assert card.onnx.sha256 == sha256_file(vdir / "model.onnx")
    t = card.training
    assert t.seed == 3 and t.steps > 0 and t.wall_time_seconds > 0
    assert t.command.startswith(f"python -m training train {task} --out ")
    assert "--quick" in t.command
    assert t.data["generator"]
    assert "test" in t.metrics and "solved" in t.metrics
    assert card.verification["worst"]["share_of_allowed"] <= 1
    metrics = json.loads((vdir / "metrics.json").read_text())
    assert len(metrics["history"]) >= 1 and "val_loss" in metrics["history"][0]
    assert (vdir / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    if task == "mackey-glass":
        assert t.data["tau"] == 17 and t.data["sample_interval"] == 6
        assert card.normalization is not None
        assert "baseline_linear_ar_test_nmse" in t.metrics
    if task == "csv":
        assert card.input_names == ["volume"] and card.normalization.target_offset_input == [0]
        assert card.description.startswith("nile.csv: volume -> volume, 1 row(s) ahead")
        assert t.metrics["solved"] == (t.metrics["test"]["mse_over_naive"][0] < 1)
    # The next run of the same command gets the next version.
    if task == "adding":
        again = _run("train", task, "--out", str(tmp_path / "repo"), "--quick",
                     "--no-progress", "--seed", "3")  # fmt: skip
        assert again.returncode == 0, again.stderr[-3000:]
        assert (tmp_path / "repo" / name / "2" / "model.json").is_file()
