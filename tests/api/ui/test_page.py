"""GET /ui in a real headless Chromium against a real uvicorn server.

The page loads and lists the models, runs a model on a generated sequence and draws its
plots, shows bad input and API errors, streams a live session over the WebSocket, and works
with API keys (asks for one on the first 401, then sends it).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
except ImportError:  # fail, never skip: CI must run these
    pytest.fail("the /ui tests need selenium: `pip install selenium`", pytrace=False)

from tests.api.ui.conftest import API_KEY, MG, RIVEST, TRACE
from tests.live import LiveServer

ALL_PLOTS = [
    "inputs",
    "outputs",
    "cell_states",
    "cell_outputs",
    "gate_input",
    "gate_forget",
    "gate_output",
]

# Pixels that belong to a plotted series: saturated colour (axes, grid and text are grey).
COLOURED_PIXELS = """
return Array.from(document.querySelectorAll('#plots figure')).map((f) => {
  const c = f.querySelector('canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    const hi = Math.max(d[i], d[i + 1], d[i + 2]), lo = Math.min(d[i], d[i + 1], d[i + 2]);
    if (d[i + 3] > 0 && hi - lo > 60) n++;
  }
  return [f.id, n, Number(f.dataset.points)];
});
"""


def state(d: Any) -> str:
    return str(d.execute_script("return document.body.dataset.state"))


def wait_for(d: Any, states: tuple[str, ...], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = state(d)
        if s in states:
            return s
        time.sleep(0.05)
    raise AssertionError(
        f"page state {state(d)!r}, wanted {states}; status "
        f"{d.find_element(By.ID, 'status').text!r}, error {error_text(d)!r}"
    )


def error_text(d: Any) -> str:
    el = d.find_element(By.ID, "error")
    return "" if el.get_attribute("hidden") is not None else str(el.text)


def open_page(d: Any, server: LiveServer, model: str | None = None) -> None:
    d.get(server.url + "/ui" + (f"?model={model}" if model else ""))
    assert wait_for(d, ("ready", "error")) == "ready", error_text(d)


def set_text(d: Any, element_id: str, text: str) -> None:
    el = d.find_element(By.ID, element_id)
    el.clear()
    d.execute_script("arguments[0].value = arguments[1];", el, text)


def plotted(d: Any) -> dict[str, tuple[int, int]]:
    return {fid: (coloured, points) for fid, coloured, points in d.execute_script(COLOURED_PIXELS)}


def steps_in(d: Any) -> int:
    return len(
        [ln for ln in d.find_element(By.ID, "inputs").get_property("value").splitlines() if ln]
    )


def test_page_is_served_open_with_a_csp(ui_server: LiveServer, keyed_server: LiveServer) -> None:
    for server in (ui_server, keyed_server):
        r = httpx.get(server.url + "/ui")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "script-src 'sha256-" in r.headers["content-security-policy"]
        assert "<script src=" not in r.text  # every asset inline: nothing else to fetch
    assert httpx.get(keyed_server.url + "/v1/models").status_code == 401


def test_lists_models_runs_a_generated_trial_and_plots(
    browser: Any, ui_server: LiveServer, tmp_path: Path
) -> None:
    d = browser
    open_page(d, ui_server, TRACE)
    names = [o.text for o in Select(d.find_element(By.ID, "model")).options]
    assert names == [MG, RIVEST, TRACE]
    assert Select(d.find_element(By.ID, "model")).first_selected_option.text == TRACE
    # the task's own generator is chosen and has already filled the inputs and targets
    assert (
        Select(d.find_element(By.ID, "generator")).first_selected_option.get_attribute("value")
        == TRACE
    )
    Select(d.find_element(By.ID, "gen-last")).select_by_value("probe1500")
    d.find_element(By.ID, "generate").click()
    rows = [
        json.loads(f"[{r}]")
        for r in d.find_element(By.ID, "inputs").get_property("value").splitlines()
    ]
    assert all(len(r) == 2 for r in rows) and sum(r[0] for r in rows) == 4  # 4 trials: CS
    cs = [t for t, r in enumerate(rows) if r[0] == 1]
    us = [t for t, r in enumerate(rows) if r[1] == 1]
    assert [u - c for c, u in zip(cs, us, strict=True)] == [5, 5, 5, 7]  # the last is the probe
    assert 20 <= cs[0] <= 29 and all(20 <= b - a - 6 <= 29 for a, b in itertools.pairwise(cs))
    d.find_element(By.ID, "run").click()
    assert wait_for(d, ("done", "error")) == "done", error_text(d)
    shown = plotted(d)
    assert list(shown) == [f"plot-{p}" for p in ALL_PLOTS]
    for fid, (coloured, points) in shown.items():
        assert points == len(rows), fid
        assert coloured > 100, f"{fid} looks empty"
    assert "MSE against the" in d.find_element(By.ID, "status").text
    assert d.find_element(By.ID, "download").get_attribute("hidden") is None
    d.save_screenshot(str(tmp_path / "ui-trace.png"))
    assert (tmp_path / "ui-trace.png").stat().st_size > 10_000


def test_plots_match_the_api(browser: Any, ui_server: LiveServer) -> None:
    """What the page plots is what the API answers for the same inputs."""
    d = browser
    open_page(d, ui_server, TRACE)
    d.find_element(By.ID, "run").click()
    assert wait_for(d, ("done", "error")) == "done", error_text(d)
    shown = d.execute_script("return window.peephole.plots().map((p) => p.uplot.data);")
    rows = [
        json.loads(f"[{r}]")
        for r in d.find_element(By.ID, "inputs").get_property("value").splitlines()
    ]
    body = httpx.post(
        f"{ui_server.url}/v1/models/{TRACE}/predict",
        json={"inputs": [rows], "return_internals": True},
    ).json()
    ints = body["internals"][0]
    assert shown[1][1] == pytest.approx([o[0] for o in body["outputs"][0]])
    assert shown[2][1:] == [pytest.approx(list(c)) for c in zip(*ints["cell_states"], strict=True)]
    assert shown[6][1:] == [
        pytest.approx(list(c)) for c in zip(*ints["gates"]["output"], strict=True)
    ]


def test_dopamine_model_plots_td_error_beside_the_gates(
    browser: Any, ui_server: LiveServer
) -> None:
    """rivest2010: the US prediction against its target, then the critic's delta and value
    in their own panel, then cells and gates; whole run and live stream agree with the API."""
    d = browser
    open_page(d, ui_server, RIVEST)
    assert (
        Select(d.find_element(By.ID, "generator")).first_selected_option.get_attribute("value")
        == TRACE
    )
    assert "TD critic" in d.find_element(By.ID, "model-info").text
    Select(d.find_element(By.ID, "gen-last")).select_by_value("probe500")
    d.find_element(By.ID, "generate").click()
    d.find_element(By.ID, "run").click()
    assert wait_for(d, ("done", "error")) == "done", error_text(d)
    shown = plotted(d)
    assert list(shown) == [
        "plot-inputs",
        "plot-outputs",
        "plot-td_error",
        *[f"plot-{p}" for p in ALL_PLOTS[2:]],
    ]
    assert all(c > 100 for c, _ in shown.values()), shown
    assert "MSE against the" in d.find_element(By.ID, "status").text
    rows = [
        json.loads(f"[{r}]")
        for r in d.find_element(By.ID, "inputs").get_property("value").splitlines()
    ]
    body = httpx.post(f"{ui_server.url}/v1/models/{RIVEST}/predict", json={"inputs": [rows]}).json()
    out = body["outputs"][0]
    data = d.execute_script("return window.peephole.plots().map((p) => p.uplot.data);")
    assert len(data[1]) == 3  # step, us, its target
    assert data[1][1] == pytest.approx([o[0] for o in out])
    assert data[2][1] == pytest.approx([o[1] for o in out])  # value
    assert data[2][2] == pytest.approx([o[2] for o in out])  # td_error
    assert data[2][2][0] == 0.0 and max(abs(v) for v in data[2][2]) > 0.1
    # live: the same delta, step by step over the WebSocket
    set_text(d, "delay", "0")
    d.find_element(By.ID, "stream").click()
    assert wait_for(d, ("done", "error"), timeout=60) == "done", error_text(d)
    live = d.execute_script("return window.peephole.plots()[2].uplot.data[2];")
    assert live == pytest.approx([o[2] for o in out], abs=1e-5)


def test_model_without_internals_and_the_mackey_glass_generator(
    browser: Any, ui_server: LiveServer
) -> None:
    d = browser
    open_page(d, ui_server, MG)
    assert not d.find_element(By.ID, "internals").is_enabled()
    assert (
        Select(d.find_element(By.ID, "generator")).first_selected_option.get_attribute("value")
        == MG
    )
    first = float(d.find_element(By.ID, "inputs").get_property("value").splitlines()[0])
    assert first == pytest.approx(1.07961234, abs=1e-6)  # training/tasks series(.., x0=0.5)[0]
    d.find_element(By.ID, "run").click()
    assert wait_for(d, ("done", "error")) == "done", error_text(d)
    shown = plotted(d)
    assert list(shown) == ["plot-inputs", "plot-outputs"]
    assert all(c > 100 and p == 300 for c, p in shown.values())


def test_bad_input_is_shown(browser: Any, ui_server: LiveServer) -> None:
    d = browser
    open_page(d, ui_server, TRACE)
    # caught in the page: not a number
    set_text(d, "inputs", "cs, us\n0, 1\n1, abc\n")
    set_text(d, "targets", "")
    d.find_element(By.ID, "run").click()
    assert wait_for(d, ("error",)) == "error"
    assert "line 3" in error_text(d) and '"abc" is not a number' in error_text(d)
    # answered by the server: three features for a two-input model (422, its detail shown)
    set_text(d, "inputs", "[[0, 1, 2], [1, 0, 0]]")
    d.find_element(By.ID, "run").click()
    assert wait_for(d, ("error",)) == "error"
    text = error_text(d)
    assert "HTTP 422" in text and len(text.splitlines()) >= 2
    # JSON that does not parse
    set_text(d, "inputs", "[[0, 1], [1, 0]")
    d.find_element(By.ID, "run").click()
    assert wait_for(d, ("error",)) == "error"
    assert "not valid JSON" in error_text(d)
    # and a good run clears the error
    d.find_element(By.ID, "generate").click()
    d.find_element(By.ID, "run").click()
    assert wait_for(d, ("done", "error")) == "done"
    assert error_text(d) == ""


def test_live_session_streams_steps(browser: Any, ui_server: LiveServer) -> None:
    d = browser
    open_page(d, ui_server, TRACE)
    set_text(d, "delay", "0")
    n = steps_in(d)
    d.find_element(By.ID, "stream").click()
    assert wait_for(d, ("done", "error"), timeout=60) == "done", error_text(d)
    assert d.find_element(By.ID, "status").get_attribute("data-offset") == str(n)
    shown = plotted(d)
    assert len(shown) == len(ALL_PLOTS)
    assert all(c > 100 and p == n for c, p in shown.values()), shown
    sid = d.find_element(By.ID, "session-id").get_property("value")
    session = httpx.get(f"{ui_server.url}/v1/sessions/{sid}").json()
    assert session["offset"] == n and session["model"] == TRACE
    # streamed step by step = one whole-sequence predict
    rows = [
        json.loads(f"[{r}]")
        for r in d.find_element(By.ID, "inputs").get_property("value").splitlines()
    ]
    whole = httpx.post(f"{ui_server.url}/v1/models/{TRACE}/predict", json={"inputs": [rows]}).json()
    live = d.execute_script("return window.peephole.plots()[1].uplot.data[1];")
    assert live == pytest.approx([o[0] for o in whole["outputs"][0]], abs=1e-5)
    # streaming again continues the same session from its offset
    d.find_element(By.ID, "stream").click()
    assert wait_for(d, ("done", "error"), timeout=60) == "done", error_text(d)
    assert d.find_element(By.ID, "status").get_attribute("data-offset") == str(2 * n)
    d.find_element(By.ID, "end-session").click()
    deadline = time.monotonic() + 10
    while httpx.get(f"{ui_server.url}/v1/sessions/{sid}").status_code != 404:
        assert time.monotonic() < deadline, "the session was not ended"
        time.sleep(0.05)


def test_live_session_can_be_stopped(browser: Any, ui_server: LiveServer) -> None:
    d = browser
    open_page(d, ui_server, TRACE)
    set_text(d, "delay", "200")
    d.find_element(By.ID, "stream").click()
    deadline = time.monotonic() + 20
    while not (d.find_element(By.ID, "status").get_attribute("data-offset") or "").isdigit():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    d.find_element(By.ID, "stop").click()
    assert wait_for(d, ("done", "error")) == "done", error_text(d)
    assert "Stopped" in d.find_element(By.ID, "status").text
    assert int(d.find_element(By.ID, "status").get_attribute("data-offset")) < steps_in(d)
    d.find_element(By.ID, "end-session").click()


def test_unknown_session_is_an_error(browser: Any, ui_server: LiveServer) -> None:
    d = browser
    open_page(d, ui_server, TRACE)
    set_text(d, "session-id", "no-such-session")
    d.find_element(By.ID, "stream").click()
    assert wait_for(d, ("error",)) == "error"
    assert "HTTP 404" in error_text(d)


def answer_key_dialog(d: Any, key: str) -> None:
    deadline = time.monotonic() + 15
    dialog = d.find_element(By.ID, "key-dialog")
    while dialog.get_attribute("open") is None:
        assert time.monotonic() < deadline, "no key dialog"
        time.sleep(0.05)
    field = d.find_element(By.ID, "key-input")
    field.clear()
    field.send_keys(key)
    d.find_element(By.ID, "key-ok").click()


def test_api_keys(browser: Any, keyed_server: LiveServer, tmp_path: Path) -> None:
    d = browser
    d.get(keyed_server.url + "/ui")
    d.execute_script("sessionStorage.clear();")
    d.get(keyed_server.url + "/ui?model=" + TRACE)
    answer_key_dialog(d, "wrong-key")
    # refused: asked again, saying so
    deadline = time.monotonic() + 15
    while "refused" not in d.find_element(By.ID, "key-reason").text:
        assert time.monotonic() < deadline, d.find_element(By.ID, "key-reason").text
        time.sleep(0.05)
    answer_key_dialog(d, API_KEY)
    assert wait_for(d, ("ready", "error")) == "ready", error_text(d)
    assert d.execute_script("return sessionStorage.getItem('peephole.apiKey')") == API_KEY
    assert "in use" in d.find_element(By.ID, "key-status").text
    d.find_element(By.ID, "run").click()
    assert wait_for(d, ("done", "error")) == "done", error_text(d)
    # the WebSocket passes the key as ?access_token=
    set_text(d, "delay", "0")
    d.find_element(By.ID, "stream").click()
    assert wait_for(d, ("done", "error"), timeout=60) == "done", error_text(d)
    assert d.find_element(By.ID, "status").get_attribute("data-offset") == str(steps_in(d))
    d.save_screenshot(str(tmp_path / "ui-keyed.png"))
    d.find_element(By.ID, "end-session").click()
    # cancelling the dialog leaves a clear error
    d.find_element(By.ID, "forget-key").click()
    d.get(keyed_server.url + "/ui")
    deadline = time.monotonic() + 15
    while d.find_element(By.ID, "key-dialog").get_attribute("open") is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    d.find_element(By.ID, "key-cancel").click()
    assert wait_for(d, ("error",)) == "error"
    assert "HTTP 401" in error_text(d)
