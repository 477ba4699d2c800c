"""`peephole models` and `peephole predict` against the real server, and every user mistake
as one line on stderr with exit status 2."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from peephole import Client
from peephole.cli import main
from tests.client.conftest import KEY, MG, TC
from tests.live import LiveServer, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def env(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEEPHOLE_URL", server.url)
    monkeypatch.setenv("PEEPHOLE_API_KEY", KEY)


def write_csv(path: Path, rows: list[list[str]], header: str = "t,x,label") -> Path:
    path.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return path


def series_csv(tmp_path: Path, n: int = 50) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(3).normal(0.9, 0.2, size=n)
    rows = [[str(i), repr(float(v)), f"row{i}"] for i, v in enumerate(x)]
    return write_csv(tmp_path / "in.csv", rows), x[:, None]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(argv, out)
    return code, out.getvalue(), capsys.readouterr().err


def parse(text: str) -> tuple[str, np.ndarray]:
    header, *rows = text.strip().splitlines()
    return header, np.asarray([[float(v) for v in r.split(",")] for r in rows])


@pytest.mark.usefixtures("env")
def test_models(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["models"], capsys)
    assert code == 0 and err == ""
    lines = {line.split()[0]: line.split() for line in out.splitlines()}
    assert lines["NAME"] == ["NAME", "VERSIONS", "DEFAULT", "INPUTS", "OUTPUTS"]
    assert lines[MG] == [MG, "1,2", "2", "x", "x_next"]
    assert lines[TC][3] == "cs,us"


@pytest.mark.usefixtures("env")
def test_predict_whole_and_streamed_equal_the_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], server: LiveServer
) -> None:
    path, x = series_csv(tmp_path)
    expected = Client(server.url, KEY).predict(MG, x)
    code, whole, err = run(["predict", MG, "--csv", str(path), "--columns", "x"], capsys)
    assert code == 0 and err == ""
    header, y = parse(whole)
    assert header == "x_next" and y.shape == (50, 1)
    np.testing.assert_allclose(y, expected, atol=1e-6)
    out = tmp_path / "out.csv"
    argv = ["predict", MG, "--csv", str(path), "--stream", "--chunk-size", "7", "--out", str(out)]
    code, printed, err = run(argv, capsys)  # the model's input name is the default column
    assert code == 0 and printed == "" and err == ""
    assert parse(out.read_text())[0] == "x_next"
    np.testing.assert_allclose(parse(out.read_text())[1], y, atol=1e-6)


def test_flags_beat_the_environment_and_stdin_works(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEEPHOLE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("PEEPHOLE_API_KEY", "wrong")
    monkeypatch.setattr(sys, "stdin", io.StringIO("x\n0.9\n1.0\n"))
    out = io.StringIO()
    argv = ["predict", MG, "--csv", "-", "--url", server.url, "--api-key", KEY, "--version", "1"]
    assert main(argv, out) == 0
    assert parse(out.getvalue())[1].shape == (2, 1)


@pytest.mark.usefixtures("env")
def test_gaps_stop_with_the_line_or_are_carried_forward(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_csv(tmp_path / "gaps.csv", [["0", "0.9", "a"], ["1", "", "b"], ["2", "NA", "c"]])
    code, out, err = run(["predict", MG, "--csv", str(path)], capsys)
    assert (code, out) == (2, "")
    assert (
        err
        == f"peephole: error: {path} line 3, column x: no value (--missing ffill carries the previous value)\n"
    )
    code, out, err = run(["predict", MG, "--csv", str(path), "--missing", "ffill"], capsys)
    assert code == 0 and err == ""
    y = parse(out)[1]
    np.testing.assert_allclose(
        y, Client(os.environ["PEEPHOLE_URL"], KEY).predict(MG, np.full((3, 1), 0.9)), atol=1e-6
    )


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ["predict", MG, "--csv", "{csv}", "--columns", "y"],
            "has no column y (it has: t, x, label)",
        ),
        (
            ["predict", MG, "--csv", "{csv}", "--columns", "x,t"],
            "takes 1 input(s) (x); --columns names 2",
        ),
        (
            ["predict", MG, "--csv", "{csv}", "--columns", "label"],
            "line 2, column label: 'row0' is not a number",
        ),
        (["predict", "no-such-model", "--csv", "{csv}"], "no-such-model"),
        (["predict", MG, "--csv", "{csv}", "--version", "7"], "mackey-glass"),
        (
            ["predict", MG, "--csv", "{csv}", "--stream", "--chunk-size", "0"],
            "--chunk-size must be at least 1",
        ),
        (
            ["predict", MG, "--csv", "/no/such.csv"],
            "cannot read /no/such.csv: No such file or directory",
        ),
        (["predict", MG], "the following arguments are required: --csv"),
        (["predict", MG, "--csv", "{csv}", "--missing", "zero"], "invalid choice: 'zero'"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["models", "--url", "ftp://host"], "must start with http:// or https://"),
        (["models", "--api-key", "wrong"], "missing or wrong API key"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(
    argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = series_csv(tmp_path, 3)
    code, out, err = run([a.replace("{csv}", str(path)) for a in argv], capsys)
    assert code == 2 and out == ""
    assert err.startswith("peephole: error: ") and err.count("\n") == 1 and says in err


@pytest.mark.usefixtures("env")
def test_too_long_for_one_predict_points_to_stream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = series_csv(tmp_path, 2001)  # the server's limit is 2000 steps per sequence
    code, out, err = run(["predict", MG, "--csv", str(path)], capsys)
    assert code == 2 and "--stream feeds a series of any length" in err and err.count("\n") == 1
    code, out, err = run(["predict", MG, "--csv", str(path), "--stream"], capsys)
    assert code == 0 and parse(out)[1].shape == (2001, 1)


def test_an_unreachable_server_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["models", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "0.5"]
    code, out, err = run(argv, capsys)
    assert code == 1 and "cannot reach the server" in err and err.count("\n") == 1


def test_python_m_peephole(server: LiveServer) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PEEPHOLE_URL": server.url,
        "PEEPHOLE_API_KEY": KEY,
    }
    r = subprocess.run([sys.executable, "-m", "peephole", "models"], capture_output=True,
                       text=True, env=env, timeout=60)  # fmt: skip
    assert r.returncode == 0 and MG in r.stdout and r.stderr == ""
