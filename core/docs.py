"""The API documentation page, ``GET /docs``: Swagger UI served by the service itself.

FastAPI's own /docs page loads Swagger UI's script and stylesheet from a CDN, without an integrity check, and its
icon from FastAPI's site: whoever serves those files runs script with the service's origin. This page loads only
the copies vendored in core/docs_assets/ (its README says where they come from and how to check them), and its
Content-Security-Policy lets it load nothing from elsewhere and run no script but that file and the page's own
start-up script, allowed by its hash. FastAPI's /redoc, which would load ReDoc from a CDN too, is not served.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

DOCS_PATH = "/docs"
ASSETS_DIR = Path(__file__).with_name("docs_assets")
# The files served and their content types; nothing else under docs_assets/ is reachable.
SERVED_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
# An asset's URL names Swagger UI's version: a new version is a new URL, so a browser may keep a copy for a year.
ASSET_HEADERS = {"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"}
INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def swagger_ui_version() -> str:
    """The vendored Swagger UI's version, as its own package.json says."""
    version: str = json.loads((ASSETS_DIR / "package.json").read_bytes())["version"]
    return version


def content_security_policy(page: bytes) -> str:
    """The page's policy: files of its own origin only, and of inline scripts only the page's own (by hash)."""
    hashes = [base64.b64encode(hashlib.sha256(script).digest()).decode() for script in INLINE_SCRIPT.findall(page)]
    return "; ".join(
        (
            "default-src 'none'",
            " ".join(["script-src 'self'", *(f"'sha256-{digest}'" for digest in hashes)]),
            "style-src 'self'",
            "img-src 'self' data:",  # Swagger UI's stylesheet draws its icons from data: URLs
            "connect-src 'self'",  # the OpenAPI document, and the requests of "Try it out"
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def add_docs_routes(app: FastAPI, openapi_url: str) -> None:
    """Serve ``GET /docs``, Swagger UI on the document at ``openapi_url``, and Swagger UI's files below it."""
    prefix = f"{DOCS_PATH}/assets/{swagger_ui_version()}"
    page = bytes(
        get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{prefix}/swagger-ui-bundle.js",
            swagger_css_url=f"{prefix}/swagger-ui.css",
            swagger_favicon_url=f"{prefix}/favicon-32x32.png",
            oauth2_redirect_url=None,  # no OAuth2 flow to sign in by: the services take bearer tokens and API keys
            # No badge image from validator.swagger.io (which would also send it the document's URL).
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        ).body
    )
    headers = {"Content-Security-Policy": content_security_policy(page), "X-Content-Type-Options": "nosniff"}

    async def docs_page(request: Request) -> Response:
        return HTMLResponse(page, headers=headers)

    app.add_route(DOCS_PATH, docs_page, include_in_schema=False)
    for name, media_type in SERVED_ASSETS.items():
        app.add_route(f"{prefix}/{name}", served_file(ASSETS_DIR / name, media_type), include_in_schema=False)


def served_file(path: Path, media_type: str) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint answering with one vendored file (read in chunks off the event loop by ``FileResponse``)."""

    async def endpoint(request: Request) -> Response:
        return FileResponse(path, media_type=media_type, headers=ASSET_HEADERS)

    return endpoint
