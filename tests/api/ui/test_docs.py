"""/docs and /redoc in a real headless Chromium, with no internet: the assets come from the app.

The browser runs with its network closed to anything but loopback, so a page that still
reached for a CDN would render empty. With API keys set the docs stay open, and Swagger's
Authorize button takes the key and sends it on "Try it out".
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

try:
    from selenium.webdriver.common.by import By
except ImportError:  # fail, never skip: CI must run these
    pytest.fail("the /ui tests need selenium: `pip install selenium`", pytrace=False)

from tests.api.ui.conftest import API_KEY
from tests.live import LiveServer


def _wait(d: Any, css: str, n: int = 1, timeout: float = 30) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = d.find_elements(By.CSS_SELECTOR, css)
        if len(found) >= n:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{css!r}: fewer than {n} elements; page: {d.page_source[:500]!r}")


def _external_requests(d: Any) -> list[str]:
    """Every resource the page loaded from somewhere other than the server itself."""
    names = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return [n for n in names if not n.startswith(("http://127.0.0.1", "data:", "blob:"))]


def test_docs_pages_need_no_key_and_no_internet(keyed_server: LiveServer) -> None:
    with httpx.Client(base_url=keyed_server.url) as c:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui-bundle.js",
                     "/docs/assets/redoc.standalone.js", "/docs/assets/swagger-ui.css"):  # fmt: skip
            assert c.get(path).status_code == 200, path
        for path in ("/docs", "/redoc"):
            assert "cdn." not in c.get(path).text and "fonts.googleapis" not in c.get(path).text
        assert c.get("/v1/models").status_code == 401  # the API itself stays closed
        assert c.get("/docs/assets/../../v1/models").status_code in (401, 404)
        spec = c.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "/v1/sessions/{session_id}/steps" in spec["paths"]
    assert "WebSocket" in spec["info"]["description"]


def test_swagger_lists_operations_and_authorize_sends_the_key(
    browser: Any, keyed_server: LiveServer
) -> None:
    d = browser
    d.get(f"{keyed_server.url}/docs")
    ops = _wait(d, ".opblock", n=10)
    summaries = " ".join(o.text for o in ops)
    assert "/v1/models/{name}/predict" in summaries and "/v2/models/{name}/infer" in summaries
    assert _external_requests(d) == []
    # Authorize with the key, then run GET /v1/models from the page: 200, not 401.
    d.find_element(By.CSS_SELECTOR, "button.authorize").click()
    field = _wait(d, ".modal-ux input")[0]
    field.send_keys(API_KEY)
    d.find_element(By.CSS_SELECTOR, ".modal-ux button.authorize").click()
    d.find_element(By.CSS_SELECTOR, ".modal-ux button.btn-done").click()
    op_id = "#operations-models-list_models_v1_models_get"
    _wait(d, op_id)[0].find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    _wait(d, f"{op_id} .try-out__btn")[0].click()
    _wait(d, f"{op_id} .execute")[0].click()
    code = _wait(d, f"{op_id} .live-responses-table tbody .response-col_status")[0].text
    assert code.strip().startswith("200"), code


def test_redoc_renders_offline(browser: Any, ui_server: LiveServer) -> None:
    d = browser
    d.get(f"{ui_server.url}/redoc")
    _wait(d, "[data-section-id^='operation/']", n=10)
    assert "predict" in d.page_source
    assert _external_requests(d) == []
