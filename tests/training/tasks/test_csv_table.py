"""training/tasks/csv_table.py: gaps, time columns and mistakes, on small files whose answer
is known and on a real file with gaps (statsmodels' co2 series)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.training.tasks.test_csv_series import real_series
from training.errors import UserError
from training.tasks.csv_table import read_table

GAPPY = "t,a,b\n1,1.0,10\n2,,20\n3,3.0,NA\n4,4.0,40\n5,,50\n6,6.0,60\n"


def _file(tmp_path, text: str, name: str = "s.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_missing_values_are_refused_by_default_naming_the_line_and_the_options(tmp_path):
    with pytest.raises(UserError) as e:
        read_table(_file(tmp_path, GAPPY), ["a", "b"])
    assert str(e.value) == (
        f"{tmp_path / 's.csv'} line 3: column a has no value (3 missing in "
        "all); to handle gaps pass --missing drop, interpolate or ffill"
    )


def test_drop_interpolate_ffill(tmp_path):
    path = _file(tmp_path, GAPPY)
    drop = read_table(path, ["a", "b"], missing="drop")
    np.testing.assert_array_equal(drop.values, [[1, 10], [4, 40], [6, 60]])
    assert drop.report["rows_dropped"] == 3 and drop.lines.tolist() == [2, 5, 7]
    interp = read_table(path, ["a", "b"], missing="interpolate")
    np.testing.assert_allclose(interp.values, [[1, 10], [2, 20], [3, 30], [4, 40], [5, 50],
                                               [6, 60]])  # fmt: skip
    assert interp.report["values_filled"] == 3
    ffill = read_table(path, ["a", "b"], missing="ffill")
    np.testing.assert_array_equal(ffill.column("a"), [1, 1, 3, 4, 4, 6])
    np.testing.assert_array_equal(ffill.column("b"), [10, 20, 20, 40, 50, 60])
    # Along an uneven time column, interpolation follows the times, not the rows.
    uneven = _file(tmp_path, "t,a\n0,0\n1,\n4,4\n", "u.csv")
    assert read_table(uneven, ["a"], time="t", missing="interpolate").column("a")[1] == 1.0
    # A leading gap has no past: that row is dropped, not invented.
    lead = _file(tmp_path, "a\n\n,\nNaN\n2\n3\n", "l.csv")
    assert read_table(lead, ["a"], missing="ffill").values.ravel().tolist() == [2, 3]


def test_time_column_orders_and_checks_the_rows(tmp_path):
    days = ("2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04", "2020-01-06")
    dates = _file(tmp_path, "day,a\n" + "".join(f"{d},{i}\n" for i, d in enumerate(days)), "d.csv")
    t = read_table(dates, ["a"], time="day")
    assert t.report["time"]["gaps"] == 1 and t.report["time"]["usual_step"] == 86400.0
    back = _file(tmp_path, "t,a\n1,1\n3,3\n2,2\n", "b.csv")
    with pytest.raises(
        UserError,
        match=r"line 4: time 2 comes before line 3's 3; the rows must "
        r"be in time order \(or pass --sort-time",
    ):
        read_table(back, ["a"], time="t")
    assert read_table(back, ["a"], time="t", sort=True).column("a").tolist() == [1, 2, 3]
    dup = _file(tmp_path, "t,a\n1,1\n2,2\n2,3\n", "dup.csv")
    with pytest.raises(UserError, match="line 4: time 2 in column t repeats line 3's"):
        read_table(dup, ["a"], time="t")
    bad = _file(tmp_path, "t,a\n1,1\nJan-2,2\n", "bad.csv")
    with pytest.raises(UserError, match="line 3, time column t: 'Jan-2' is neither a number"):
        read_table(bad, ["a"], time="t")


def test_other_mistakes_and_dialects(tmp_path):
    with pytest.raises(UserError, match=r"line 3, column a: 'x' is not a number"):
        read_table(_file(tmp_path, "a\n1\nx\n"), ["a"])
    with pytest.raises(UserError, match="not a finite number"):
        read_table(_file(tmp_path, "a\n1\ninf\n"), ["a"])
    with pytest.raises(UserError, match="--missing guess"):
        read_table(_file(tmp_path, "a\n1\n"), ["a"], missing="guess")
    with pytest.raises(UserError, match="empty"):
        read_table(_file(tmp_path, ""), ["a"])
    semi = tmp_path / "semi.csv"
    semi.write_bytes('\ufeff"x";"y"\n1,5;2\n3,5;4\n'.encode())  # BOM, semicolons, quotes
    t = read_table(semi, ["y"])
    assert t.columns == ["y"] and t.values.ravel().tolist() == [2, 4]


def test_a_real_file_with_gaps(tmp_path):
    """statsmodels' weekly Mauna Loa CO2 series (2,284 rows, 59 blank cells)."""
    path = real_series(tmp_path, "co2")
    with pytest.raises(
        UserError,
        match="co2.csv line 8: column co2 has no value "
        r"\(59 missing in all\)",
    ):
        read_table(path, ["co2"], time="date")
    t = read_table(path, ["co2"], time="date", missing="interpolate")
    assert len(t.values) == 2284 and not np.isnan(t.values).any()
    assert t.report == {"missing": "interpolate", "missing_values": 59, "values_filled": 59,
                        "rows_dropped": 0, "time": t.report["time"]}  # fmt: skip
    d = read_table(path, ["co2"], missing="drop")
    assert len(d.values) == 2284 - 59
