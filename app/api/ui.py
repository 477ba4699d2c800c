"""GET /ui: the single-page viewer (run a model, plot outputs, cell states and gates).

The page lives in `app/static/ui/` as plain files (no build step). It is served as ONE
document with its stylesheets and scripts inlined: `/ui` is the only page route that stays
open when PEEPHOLE_API_KEYS is set (docs/API.md, "Conventions"), and a browser cannot send a Bearer
key with `<script src>` or `<link href>`, so separate asset URLs would answer 401. Every
tag marked `data-inline` in index.html is replaced by the file it names; a Content Security
Policy allows exactly those inline blocks (by hash) and same-origin fetches and WebSockets.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

UI_DIR = Path(__file__).resolve().parent.parent / "static" / "ui"

router = APIRouter(tags=["ui"], include_in_schema=False)

_STYLE = re.compile(r'<link rel="stylesheet" href="([^"]+)" data-inline>')
_SCRIPT = re.compile(r'<script src="([^"]+)" data-inline></script>')


def _asset(name: str) -> str:
    path = (UI_DIR / name).resolve()
    if UI_DIR not in path.parents:
        raise ValueError(f"asset outside {UI_DIR}: {name}")
    text = path.read_text(encoding="utf-8")
    # An inline block ends at the first "</script" or "</style": never let an asset close it.
    return text.replace("</script", "<\\/script").replace("</style", "<\\/style")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@lru_cache(maxsize=1)
def render_page() -> tuple[str, str]:
    """(the page with its assets inlined, its Content-Security-Policy)."""
    styles: list[str] = []
    scripts: list[str] = []

    def style(m: re.Match[str]) -> str:
        body = "\n" + _asset(m.group(1)) + "\n"
        styles.append(_sha256(body))
        return f"<style>{body}</style>"

    def script(m: re.Match[str]) -> str:
        body = "\n" + _asset(m.group(1)) + "\n"
        scripts.append(_sha256(body))
        return f"<script>{body}</script>"

    html = (UI_DIR / "index.html").read_text(encoding="utf-8")
    html = _SCRIPT.sub(script, _STYLE.sub(style, html))
    csp = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(scripts),
            # uPlot positions its legend and cursor through element.style (CSSOM, allowed);
            # the hashes cover the two inline stylesheets.
            "style-src " + " ".join(styles),
            "img-src 'self' data: blob:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return html, csp


@router.get("/ui", response_class=HTMLResponse)
@router.get("/ui/", response_class=HTMLResponse)
async def ui_page() -> HTMLResponse:
    """The viewer page (open without an API key; it asks for one when the API answers 401)."""
    html, csp = render_page()
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )
