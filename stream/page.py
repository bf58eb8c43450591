"""The dashboard, ``GET /``: a page that follows topic patterns live, served by the stream service itself.

The page holds no data (it reads ``GET /v1/stream`` like any client, with the browser's cookie), so it is always
served, also with the API documentation off. Its files live in stream/page_assets/: our own page, script and
stylesheet, and uPlot (vendored from npm with its licence and recorded SHA-256, see the README there). They are read
once when the app is built and served from memory under ``/ui/<digest>/``, where the digest is that of their
contents: a changed file is a new URL, so a browser may keep them for a year, and the URL can never name other
contents than the ones served. The page's Content-Security-Policy lets it load only those files (no inline script
at all) and connect only to its own origin (the stream and ``/v1/session``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from core.docs import ASSET_HEADERS  # files named by version or digest: cached for a year, as the docs' are

PAGE_PATH = "/"
ASSETS_PATH = "/ui"
ASSETS_DIR = Path(__file__).with_name("page_assets")
PAGE_FILE = "index.html"
ASSETS_PLACEHOLDER = b"{{ASSETS}}"
# URL name to the file under page_assets/ and its content type; nothing else there is reachable.
SERVED_ASSETS = {
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "app.css": ("app.css", "text/css; charset=utf-8"),
    "uPlot.iife.min.js": ("uplot/dist/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "uPlot.min.css": ("uplot/dist/uPlot.min.css", "text/css; charset=utf-8"),
}
DIGEST_CHARS = 16
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",  # uPlot sizes its elements through the DOM's style properties, which this allows
        "img-src 'self' data:",  # the page's empty icon (no request for /favicon.ico)
        "connect-src 'self'",  # the stream (EventSource) and /v1/session (fetch)
        "base-uri 'none'",
        "form-action 'self'",  # the topic form without script is a plain GET of this page
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # the page names the assets' digest: a new release must reach the browser
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One served file: its bytes and content type."""

    body: bytes
    media_type: str


@dataclass(frozen=True, slots=True)
class Dashboard:
    """The page and its files as served: the page refers to the assets under ``prefix``."""

    page: bytes
    prefix: str
    assets: dict[str, Asset]

    @classmethod
    def load(cls, directory: Path = ASSETS_DIR) -> Dashboard:
        """Read the files once and name them by the digest of their contents."""
        assets = {name: Asset((directory / path).read_bytes(), media) for name, (path, media) in SERVED_ASSETS.items()}
        digest = hashlib.sha256()
        for name, asset in sorted(assets.items()):
            digest.update(f"{name}\0{len(asset.body)}\0".encode())
            digest.update(asset.body)
        prefix = f"{ASSETS_PATH}/{digest.hexdigest()[:DIGEST_CHARS]}"
        page = (directory / PAGE_FILE).read_bytes().replace(ASSETS_PLACEHOLDER, prefix.encode())
        return cls(page, prefix, assets)


def add_page_routes(app: FastAPI) -> None:
    """Serve the dashboard at ``GET /`` and its files under ``/ui/<digest>/``; none of them in the API document."""
    dashboard = Dashboard.load()

    async def page(request: Request) -> Response:
        return Response(dashboard.page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    app.add_route(PAGE_PATH, page, include_in_schema=False)
    for name, asset in dashboard.assets.items():
        app.add_route(f"{dashboard.prefix}/{name}", served_asset(asset), include_in_schema=False)


def served_asset(asset: Asset) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint answering with one file's bytes, read when the app was built."""

    async def endpoint(request: Request) -> Response:
        return Response(asset.body, media_type=asset.media_type, headers=ASSET_HEADERS)

    return endpoint
