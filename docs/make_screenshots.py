"""Screenshot of /ui for the docs: a trace-conditioning trial run by the shipped model.

    python docs/make_screenshots.py [--models models] [--out docs/img/ui.png]
    python docs/make_screenshots.py --model rivest2010 --out docs/img/ui-rivest2010.png

Serves the model repository with the real app (uvicorn on a free loopback port), opens
/ui in headless Chromium (Debian's `chromium` and `chromium-driver`, driven by selenium),
generates trials with the page's own generator, runs them with `return_internals` and saves
the whole page. Not part of CI: it needs the trained `trace-conditioning` model.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.config import Settings  # noqa: E402  (the repository root is on the path now)
from app.main import create_app  # noqa: E402

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1400,1000",
]


def serve(repo: Path) -> tuple[uvicorn.Server, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    app = create_app(Settings(model_repository=repo, provider="cpu", _env_file=None))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def wait_state(driver: webdriver.Chrome, wanted: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (state := driver.execute_script("return document.body.dataset.state")) != wanted:
        if state == "error" or time.monotonic() > deadline:
            raise RuntimeError(f"page state {state}: {driver.find_element(By.ID, 'error').text}")
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "ui.png")
    ap.add_argument(
        "--model",
        default="trace-conditioning",
        help="trace-conditioning, or rivest2010 (its TD error panel too)",
    )
    ap.add_argument("--trials", type=int, default=1, help="normal trials before the last one")
    ap.add_argument(
        "--last", default="normal", choices=["normal", "probe500", "probe1500", "omission"]
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    server, url = serve(args.models)
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='peephole-shot-')}")
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(f"{url}/ui?model={args.model}")
        wait_state(driver, "ready")
        trials = driver.find_element(By.ID, "gen-trials")
        trials.clear()
        trials.send_keys(str(args.trials))
        Select(driver.find_element(By.ID, "gen-last")).select_by_value(args.last)
        seed = driver.find_element(By.ID, "gen-seed")
        seed.clear()
        seed.send_keys(str(args.seed))
        driver.find_element(By.ID, "generate").click()
        driver.find_element(By.ID, "run").click()
        wait_state(driver, "done")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, int(height) + 80)
        driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0);")
        time.sleep(0.5)  # let the plots follow the new size
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
        print(f"wrote {args.out} ({driver.find_element(By.ID, 'status').text})")
    finally:
        driver.quit()
        server.should_exit = True


if __name__ == "__main__":
    main()
