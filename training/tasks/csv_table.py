"""Reading a user's CSV series: named columns, gaps, an optional time column.

Every problem is a `UserError` naming the file, the line and what to do. The delimiter
(comma, semicolon or tab) is detected; a UTF-8 byte-order mark and blanks around names and
values are ignored. Empty cells and NA, N/A, NaN, null, None (any case) are missing values,
handled by `missing`:

- `error` (default): refuse, naming the first line with a gap and the options;
- `drop`: drop every row with a gap in one of the columns used;
- `interpolate`: linear between the values before and after (along the time column if
  there is one, else along the rows); rows before a column's first or after its last value
  are dropped;
- `ffill`: the last value before; rows before a column's first value are dropped.

With a time column (numbers, or ISO 8601 dates and times such as 1958-03-29 or 19580329), the
rows must be in increasing time (`sort=True` sorts them first); a repeated time is an error. Time
steps much longer than the usual one are counted as gaps and reported (the network sees
rows, not times).
"""

from __future__ import annotations

import contextlib
import csv
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from training.errors import UserError

MISSING = {"", "na", "n/a", "nan", "null", "none", "#n/a"}
POLICIES = ("error", "drop", "interpolate", "ffill")


@dataclass
class Table:
    """The used columns as float64 [rows, columns], in time order, gaps handled."""

    columns: list[str]
    values: np.ndarray
    lines: np.ndarray  # the file line of each kept row (for messages)
    rows_read: int
    report: dict[str, Any] = field(default_factory=dict)  # what was dropped or filled

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.columns.index(name)]


def read_table(
    path: str | Path,
    columns: list[str],
    time: str | None = None,
    missing: str = "error",
    sort: bool = False,
) -> Table:
    if missing not in POLICIES:
        raise UserError(f"--missing {missing}: choose one of {', '.join(POLICIES)}")
    header, rows, lines = _read_rows(Path(path))
    wanted = list(dict.fromkeys([*columns, *([time] if time else [])]))
    unknown = [c for c in wanted if c not in header]
    if unknown:
        raise UserError(
            f"{path}: no column {', '.join(map(repr, unknown))}; its columns are: "
            f"{', '.join(header)}"
        )
    used = list(dict.fromkeys(columns))
    idx = [header.index(c) for c in used]
    values = np.full((len(rows), len(used)), np.nan)
    for r, (row, line) in enumerate(zip(rows, lines, strict=True)):
        if len(row) < len(header):
            row = row + [""] * (len(header) - len(row))
        for j, i in enumerate(idx):
            values[r, j] = _number(row[i], path, line, used[j])
    report: dict[str, Any] = {"missing": missing}
    t = None
    if time:
        t = np.array(
            [
                _time(
                    row[header.index(time)] if header.index(time) < len(row) else "",
                    path,
                    line,
                    time,
                )
                for row, line in zip(rows, lines, strict=True)
            ]
        )
        order = np.argsort(t, kind="stable") if sort else np.arange(len(t))
        t, values, lines = t[order], values[order], lines[order]
        _check_order(t, lines, path, time, sorted_=sort)
    values, lines, t = _handle_gaps(values, lines, t, used, path, missing, report)
    if t is not None:
        report["time"] = _spacing(t, time)
    if len(values) == 0:
        raise UserError(f"{path}: no rows left with values in {', '.join(used)}")
    return Table(columns=used, values=values, lines=lines, rows_read=len(rows), report=report)


# ------------------------------------------------------------------ the file
def _read_rows(path: Path) -> tuple[list[str], list[list[str]], np.ndarray]:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a CSV file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except PermissionError:
        raise UserError(f"{path}: not readable (permission denied)") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8 CSV") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        dialect = csv.Sniffer().sniff(text[:8192], delimiters=",;\t")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header: list[str] | None = None
    rows, lines = [], []
    for line, row in enumerate(reader, start=1):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if header is None:
            header = [c.strip() for c in row]
            continue
        rows.append([c.strip() for c in row])
        lines.append(line)
    if header is None:
        raise UserError(f"{path}: empty (a CSV file needs a header row of column names)")
    return header, rows, np.asarray(lines, dtype=np.int64)


def _number(cell: str, path: Path, line: int, column: str) -> float:
    if cell.lower() in MISSING:
        return math.nan
    try:
        v = float(cell)
    except ValueError:
        raise UserError(f"{path} line {line}, column {column}: {cell!r} is not a number") from None
    if not math.isfinite(v):
        raise UserError(f"{path} line {line}, column {column}: {cell!r} is not a finite number")
    return v


def _time(cell: str, path: Path, line: int, column: str) -> float:
    """Seconds since 1970 for an ISO 8601 date or time; the number itself otherwise."""
    if cell.lower() in MISSING:
        raise UserError(
            f"{path} line {line}: the time column {column} is empty (every row needs its time)"
        )
    when = None
    if len(cell) == 8 and cell.isdigit():  # 19580329: a basic ISO date, not a number
        with contextlib.suppress(ValueError):
            when = datetime.fromisoformat(cell)
    if when is None:
        try:
            return float(cell)
        except ValueError:
            pass
        try:
            when = datetime.fromisoformat(cell)
        except ValueError:
            raise UserError(
                f"{path} line {line}, time column {column}: {cell!r} is neither a "
                "number nor an ISO 8601 date/time (such as 1995-01-31)"
            ) from None
    if when.tzinfo is None:
        return (when - datetime(1970, 1, 1)).total_seconds()
    return when.timestamp()


def _check_order(t: np.ndarray, lines: np.ndarray, path: Path, column: str, sorted_: bool) -> None:
    for i in np.flatnonzero(np.diff(t) <= 0):
        a, b = lines[i], lines[i + 1]
        if t[i + 1] == t[i]:
            raise UserError(
                f"{path} line {b}: time {_fmt_time(t[i + 1])} in column {column} "
                f"repeats line {a}'s; every row needs its own time"
            )
        hint = "" if sorted_ else " (or pass --sort-time to sort them)"
        raise UserError(
            f"{path} line {b}: time {_fmt_time(t[i + 1])} comes before line {a}'s "
            f"{_fmt_time(t[i])}; the rows must be in time order{hint}"
        )


def _fmt_time(v: float) -> str:
    return f"{v:g}"


def _spacing(t: np.ndarray, column: str) -> dict[str, Any]:
    steps = np.diff(t)
    usual = float(np.median(steps)) if len(steps) else 0.0
    gaps = int((steps > 1.5 * usual).sum()) if usual > 0 else 0
    return {
        "column": column,
        "first": float(t[0]),
        "last": float(t[-1]),
        "usual_step": usual,
        "gaps": gaps,
    }


def _handle_gaps(
    values: np.ndarray,
    lines: np.ndarray,
    t: np.ndarray | None,
    columns: list[str],
    path: Path,
    missing: str,
    report: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    gap = np.isnan(values)
    report["missing_values"] = int(gap.sum())
    if not gap.any():
        return values, lines, t
    if missing == "error":
        r, c = np.argwhere(gap)[0]
        raise UserError(
            f"{path} line {lines[r]}: column {columns[c]} has no value "
            f"({int(gap.sum())} missing in all); to handle gaps pass --missing "
            "drop, interpolate or ffill"
        )
    if missing == "drop":
        keep = ~gap.any(axis=1)
        report["rows_dropped"] = int((~keep).sum())
        return values[keep], lines[keep], None if t is None else t[keep]
    axis = t if t is not None else np.arange(len(values), dtype=np.float64)
    out = values.copy()
    keep = np.ones(len(values), dtype=bool)
    for c in range(values.shape[1]):
        ok = ~gap[:, c]
        if not ok.any():
            raise UserError(f"{path}: column {columns[c]} has no values at all")
        first, last = np.flatnonzero(ok)[[0, -1]]
        keep[:first] = False
        if missing == "interpolate":
            keep[last + 1 :] = False
            out[:, c] = np.interp(axis, axis[ok], values[ok, c])
        else:  # ffill: the index of the last value at or before each row
            src = np.maximum.accumulate(np.where(ok, np.arange(len(values)), 0))
            out[:, c] = values[src, c]
    report["values_filled"] = int(gap[keep].sum())
    report["rows_dropped"] = int((~keep).sum())
    return out[keep], lines[keep], None if t is None else t[keep]
