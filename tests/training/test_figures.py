"""`python -m training figures` draws every QUALITY.md plot from the shipped models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PNGS = (
    "training_curves",
    "mackey_glass_prediction",
    "mackey_glass_horizons",
    "trace_conditioning",
    "embedded_reber",
    "adding_msd",
)


def test_figures_from_the_shipped_models(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "figures",
            "--out",
            str(tmp_path),
            "--reproduce",
            str(tmp_path / "none.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for name in PNGS:
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
    numbers = json.loads((tmp_path / "figures.json").read_text())
    mg = numbers["mackey_glass"]
    # The iterated LSTM beats the iterated linear window at 1 and 6 steps ahead.
    assert mg["lstm_nmse"][0] < mg["linear_ar_nmse"][0]
    assert mg["lstm_nmse"][5] < mg["linear_ar_nmse"][5]
    assert numbers["embedded_reber"]["correct"] == numbers["embedded_reber"]["strings"]
    assert numbers["adding"]["wrong"] <= 1
    assert numbers["msd"]["longest_right_run"] >= 1000
    tc = numbers["trace_conditioning"]
    normal = tc["normal (US 1000 ms)"]
    assert normal[4] > 0.5 and max(normal[:4]) < 0.5  # the US is anticipated, not early
