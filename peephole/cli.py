"""`peephole`: the client on the command line.

    peephole models
    peephole predict MODEL --csv in.csv --columns a,b > out.csv      # the whole series at once
    peephole predict MODEL --csv in.csv --stream --chunk-size 500     # through a session

The server is `--url` (or PEEPHOLE_URL, default http://127.0.0.1:8000), the key `--api-key`
(or PEEPHOLE_API_KEY). A mistake (a wrong flag, a column the CSV lacks, a gap in the data,
an unknown model, a wrong key) is one line on stderr and exit status 2; a server that
cannot be reached is exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from importlib import metadata
from typing import NoReturn, TextIO

import numpy as np

from peephole.client import Client
from peephole.errors import PayloadTooLarge, PeepholeError, Unavailable

DEFAULT_URL = "http://127.0.0.1:8000"
MISSING = {"", "na", "nan", "null", "none", "n/a", "-"}


class UsageError(Exception):
    """A mistake of the user's: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        raise UsageError(f"{message} (see {self.prog} --help)")


def _version() -> str:
    try:
        return metadata.version("peephole")
    except metadata.PackageNotFoundError:
        return "unknown"


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"the server (env PEEPHOLE_URL; default {DEFAULT_URL})",
    )
    common.add_argument(
        "--api-key",
        default=argparse.SUPPRESS,
        help="bearer key, when the server has PEEPHOLE_API_KEYS (env PEEPHOLE_API_KEY)",
    )
    common.add_argument(
        "--timeout", type=float, default=argparse.SUPPRESS, help="seconds per attempt (default 60)"
    )
    p = _Parser(prog="peephole", description=__doc__.split("\n\n")[0], parents=[common])
    p.add_argument("--version", action="version", version=f"peephole {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("models", parents=[common], help="the served models, their inputs and outputs")
    pr = sub.add_parser(
        "predict",
        parents=[common],
        help="run a model on the columns of a CSV",
        description="Outputs as CSV (one row per input row, the model's output "
        "names as header) on stdout or --out.",
    )
    pr.add_argument("model")
    pr.add_argument("--csv", required=True, help="input CSV with a header row ('-': stdin)")
    pr.add_argument(
        "--columns",
        help="the input columns, in the model's input order (default: the model's input names)",
    )
    pr.add_argument(
        "--version", dest="model_version", type=int, help="model version (default: newest)"
    )
    pr.add_argument(
        "--stream",
        action="store_true",
        help="feed the series through a streaming session in chunks (any length)",
    )
    pr.add_argument(
        "--chunk-size", type=int, default=1000, help="time steps per chunk with --stream"
    )
    pr.add_argument(
        "--missing",
        choices=["error", "ffill"],
        default="error",
        help="an empty or NA cell: stop (default) or carry the previous value forward",
    )
    pr.add_argument("--out", help="output CSV (default: stdout)")
    return p


def _client(args: argparse.Namespace) -> Client:
    url = getattr(args, "url", None) or os.environ.get("PEEPHOLE_URL") or DEFAULT_URL
    key = getattr(args, "api_key", None) or os.environ.get("PEEPHOLE_API_KEY") or None
    try:
        return Client(url, key, timeout=getattr(args, "timeout", 60.0))
    except ValueError as e:
        raise UsageError(str(e)) from None


def cmd_models(client: Client, out: TextIO) -> None:
    rows = [("NAME", "VERSIONS", "DEFAULT", "INPUTS", "OUTPUTS")]
    for m in client.models():
        card = client.model(m["name"])
        rows.append(
            (
                m["name"],
                ",".join(map(str, m["versions"])),
                str(m["default_version"]),
                ",".join(card["input_names"]),
                ",".join(card["output_names"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")


def read_columns(f: TextIO, name: str, columns: Sequence[str], missing: str) -> np.ndarray:
    """The named columns as floats [rows, len(columns)]; gaps and non-numbers are errors
    naming the line (or, with missing="ffill", gaps take the previous row's value)."""
    reader = csv.reader(f)
    header = [h.strip() for h in next(reader, [])]
    if not header:
        raise UsageError(f"{name} is empty (a header row is needed)")
    absent = [c for c in columns if c not in header]
    if absent:
        raise UsageError(f"{name} has no column {', '.join(absent)} (it has: {', '.join(header)})")
    idx = [header.index(c) for c in columns]
    rows: list[list[float]] = []
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        values = []
        for c, i in zip(columns, idx, strict=True):
            cell = row[i].strip() if i < len(row) else ""
            if cell.lower() in MISSING:
                if missing == "ffill" and rows:
                    values.append(rows[-1][len(values)])
                    continue
                hint = "" if missing == "ffill" else " (--missing ffill carries the previous value)"
                raise UsageError(f"{name} line {line}, column {c}: no value{hint}")
            try:
                v = float(cell)
            except ValueError:
                raise UsageError(
                    f"{name} line {line}, column {c}: {cell!r} is not a number"
                ) from None
            if not math.isfinite(v):
                raise UsageError(f"{name} line {line}, column {c}: {cell!r} is not finite")
            values.append(v)
        rows.append(values)
    if not rows:
        raise UsageError(f"{name} has a header but no rows")
    return np.asarray(rows, dtype=np.float64)


def _chunks(x: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(x), size):
        yield x[start : start + size]


def _write(out: TextIO, ys: np.ndarray) -> None:
    out.writelines(",".join(f"{v:.9g}" for v in row) + "\n" for row in ys)


def cmd_predict(client: Client, args: argparse.Namespace, output: Opener) -> None:
    card = client.model(args.model, args.model_version)
    names = card["input_names"]
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else names
    if len(columns) != card["input_size"]:
        raise UsageError(
            f"{args.model} takes {card['input_size']} input(s) ({', '.join(names)}); "
            f"--columns names {len(columns)}"
        )
    if args.chunk_size < 1:
        raise UsageError("--chunk-size must be at least 1")
    try:
        src: TextIO = sys.stdin if args.csv == "-" else open(args.csv, newline="")  # noqa: SIM115
    except OSError as e:
        raise UsageError(f"cannot read {args.csv}: {e.strerror}") from None
    with src:
        x = read_columns(src, "stdin" if args.csv == "-" else args.csv, columns, args.missing)
    header = ",".join(card["output_names"]) + "\n"
    version = card["version"]
    if not args.stream:
        try:
            y = client.predict(args.model, x, version)
        except PayloadTooLarge as e:
            raise UsageError(f"{e.detail}; --stream feeds a series of any length") from None
        with output() as out:
            out.write(header)
            _write(out, y)
        return
    with client.session(args.model, version) as s, output() as out:
        out.write(header)
        for y in s.stream(_chunks(x, args.chunk_size)):
            _write(out, y)


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None) -> int:
    """The CLI; returns the exit status (0, 1: server unreachable or failing, 2: a mistake)."""
    stdout = stdout or sys.stdout
    try:
        args = parser().parse_args(argv)
        with _client(args) as client:
            if args.command == "models":
                cmd_models(client, stdout)
            else:
                cmd_predict(client, args, lambda: _output(args.out, stdout))
        return 0
    except UsageError as e:
        return _fail(str(e), 2)
    except Unavailable as e:
        return _fail(f"cannot reach the server ({e}); is --url / PEEPHOLE_URL right?", 1)
    except PeepholeError as e:
        mistake = 400 <= (e.status_code or 0) < 500
        return _fail(e.detail if mistake else str(e), 2 if mistake else 1)
    except BrokenPipeError:  # `| head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        return _fail(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "), 2)
    except KeyboardInterrupt:
        return 130


Opener = Callable[[], AbstractContextManager[TextIO]]


def _output(path: str | None, stdout: TextIO) -> AbstractContextManager[TextIO]:
    """Opened only once there is something to write, so a mistake leaves no empty file."""
    return open(path, "w", newline="") if path else contextlib.nullcontext(stdout)  # noqa: SIM115


def _fail(message: str, code: int) -> int:
    print(f"peephole: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
