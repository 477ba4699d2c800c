"""Fixtures for the /ui tests: a model repository shaped like the shipped tasks, real uvicorn
servers (with and without API keys) and a real headless Chromium driven by selenium.

Chromium and chromedriver come from Debian (`apt-get install chromium chromium-driver`); when
they are missing the browser tests FAIL with that instruction rather than skip.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.live import LiveServer, make_settings
from training.export import export_model
from training.model import PeepholeConfig, PeepholeLSTM

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TRACE = "trace-conditioning"
MG = "mackey-glass"
RIVEST = "rivest2010"
API_KEY = "ui-test-key"
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1800",
]


def export(repo: Path, name: str, cfg: PeepholeConfig, seed: int, **kw: Any) -> PeepholeLSTM:
    torch.manual_seed(seed)
    model = PeepholeLSTM(cfg).eval()
    export_model(model, repo, name, training={"seed": seed, "data": {"generator": "random"}}, **kw)
    return model


@pytest.fixture(scope="session")
def ui_repo(tmp_path_factory: pytest.TempPathFactory, rivest: tuple[Path, Any]) -> Path:
    """Untrained models with the shipped models' tasks and shapes: trace conditioning (2 blocks
    x 2 cells, internals) and Mackey-Glass (linear output, no internals graph)."""
    repo = tmp_path_factory.mktemp("ui-models")
    trace = PeepholeConfig(
        input_size=2,
        output_size=1,
        blocks=2,
        cells_per_block=2,
        output_activation="logistic",
        init_range=1.0,
    )
    export(
        repo,
        TRACE,
        trace,
        seed=5,
        version=1,
        task=TRACE,
        input_names=["cs", "us"],
        output_names=["us_next"],
        encoding={"step_ms": 200},
    )
    mg = PeepholeConfig(
        input_size=1, output_size=1, blocks=3, output_activation="linear", g="tanh", h="tanh"
    )
    export(
        repo,
        MG,
        mg,
        seed=6,
        version=1,
        task=MG,
        input_names=["x"],
        output_names=["x_next"],
        internals=False,
    )
    shutil.copytree(rivest[0], repo / RIVEST / "1")  # the dopamine model (tests/conftest.py)
    return repo


@pytest.fixture(scope="session")
def ui_server(ui_repo: Path) -> Iterator[LiveServer]:
    with LiveServer(make_settings(ui_repo, max_steps=5000)) as s:
        yield s


@pytest.fixture(scope="session")
def keyed_server(ui_repo: Path) -> Iterator[LiveServer]:
    with LiveServer(make_settings(ui_repo, api_keys=API_KEY)) as s:
        yield s


def chrome_options(user_data_dir: str) -> Any:
    from selenium.webdriver.chrome.options import Options

    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={user_data_dir}")
    return opts


def start_browser(user_data_dir: str) -> Any:
    """A headless Chromium with a fresh profile; fails (not skips) when it is not installed."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"the /ui tests need Chromium: {', '.join(missing)} missing; "
            "install with `apt-get install -y chromium chromium-driver`",
            pytrace=False,
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:  # pragma: no cover - a dev dependency
        pytest.fail("the /ui tests need selenium: `pip install selenium`", pytrace=False)
    driver = webdriver.Chrome(
        service=Service(executable_path=str(CHROMEDRIVER)), options=chrome_options(user_data_dir)
    )
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One browser for the session (each test starts from a fresh page load)."""
    profile = tempfile.mkdtemp(prefix="peephole-chromium-")
    driver = start_browser(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
