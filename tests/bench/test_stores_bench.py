"""Smoke run of bench/stores.py (--quick: the in-process part): it runs and prints its ratios.

Not a timed assertion: the figures on a shared box are noise (docs/PERFORMANCE.md has runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stores_bench_quick() -> None:
    done = subprocess.run([sys.executable, "bench/stores.py", "--quick"], cwd=ROOT, text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for store in ("memory", "lmdb"):
        assert f"{store}: refused create at 5,000 / at 100 live sessions:" in done.stdout
        assert f"{store}/5000 " in done.stdout and "locked change" in done.stdout
