"""A quick reproduction end to end: table, figures, the HDF5 recording (read as the docs show)
and the export of its Kept network."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np

from training.__main__ import main

DOCS = Path(__file__).resolve().parents[2] / "docs" / "LNSC.md"


def test_quick_reproduction_writes_table_figures_record_and_model(tmp_path: Path, capsys) -> None:
    h5 = tmp_path / "run.h5"
    argv = [
        "reproduce",
        "rivest2010",
        "--quick",
        "--networks",
        "1",
        "--out",
        str(tmp_path),
        "--record",
        str(h5),
        "--export",
        str(tmp_path / "models"),
        "--quiet",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["networks"] == 1 and summary["kept"] == 1  # network 0 learns by block ~150
    r = json.loads((tmp_path / "rivest2010" / "reproduce.json").read_text())
    assert r["blocks"] == 201 and r["initial_success"] == [0, 0]
    table = (tmp_path / "rivest2010" / "reproduce.md").read_text()
    assert table.count("\n| ") >= 10 and "matches" in table
    for name in (
        "delta_learning",
        "probes",
        "omission",
        "time_representation",
        "trials_to_criterion",
    ):
        assert (tmp_path / "img" / "rivest2010" / f"{name}.png").stat().st_size > 5000, name
    # the recording: trial structure and per-step values agree with each other
    with h5py.File(h5) as f:
        names = set(f["blocks"])
        assert {"initial_train_0", "master_train_200", "master_probe_200", "post_omission"} <= names
        b = f["blocks/master_probe_200"]
        T = int(b["length"][0])
        cs, us, phase = b["cs"][0, :T], b["us"][0, :T], b["phase"][0, :T]
        onsets = b["trials/onset"][:]
        np.testing.assert_array_equal(np.nonzero(cs)[0], onsets)
        np.testing.assert_array_equal(np.nonzero(us)[0], onsets + b["trials/delay"][:])
        assert (phase[onsets] == 0).all() and len(onsets) == 5
        assert b["td_error"][0, 0] == 0.0 and b["gates"].shape[2:] == (2, 3)
        assert f["networks/theta"].shape == (1, 87)
    # the docs' reading example runs on it
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    code = code.replace('"run.h5"', repr(str(h5))).replace("master_probe_1000", "master_probe_200")
    exec(compile(code, "LNSC.md", "exec"), {})
    assert "delta around the late probes" in capsys.readouterr().out
    card = json.loads((tmp_path / "models" / "rivest2010" / "1" / "model.json").read_text())
    assert card["training"]["command"].startswith("python -m training reproduce rivest2010 --quick")
    assert card["training"]["metrics"]["network"] == {"seed": 0, "program": "master", "index": 0}
