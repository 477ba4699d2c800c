"""/docs (Swagger UI) and /redoc, rendered from assets this app serves: no CDN, no internet.

FastAPI's defaults load Swagger UI and ReDoc from a public CDN, so on a laptop without
internet, or in a closed cluster, /docs is a blank page. The assets are vendored in
`app/static/docs/` (versions and licences in its README.md) and served under
`/docs/assets/`. These pages, their assets and /openapi.json stay open when
PEEPHOLE_API_KEYS is set (they hold no data); Swagger's Authorize button takes the bearer
key and sends it with every "Try it out" request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_DIR = Path(__file__).resolve().parent.parent / "static" / "docs"
ASSETS = "/docs/assets"
OPENAPI_URL = "/openapi.json"
NO_ICON = "data:,"  # no favicon request at all (the default points at a public site)

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title="Peephole - Swagger UI",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=NO_ICON,
        swagger_ui_parameters={"persistAuthorization": True},
    )


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url=OPENAPI_URL,
        title="Peephole - ReDoc",
        redoc_js_url=f"{ASSETS}/redoc.standalone.js",
        redoc_favicon_url=NO_ICON,
        with_google_fonts=False,
    )


def install_docs(app: FastAPI) -> None:
    """Serve the docs pages and their assets, and document the bearer key in the schema."""
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=DOCS_DIR), name="docs-assets")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of PEEPHOLE_API_KEYS (only when keys are set).",
                }
            }
            # Optional: `{}` means a call without a key is valid too (no keys configured).
            schema["security"] = [{"bearer": []}, {}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
