"""The API documentation: /docs is Swagger UI served by the service itself (nothing loaded from another host, the
vendored files exactly those recorded), under a policy that lets it run nothing else; turned off (the chart does),
its routes are not there at all."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from support.sse import Serve

from core.docs import ASSETS_DIR, swagger_ui_version
from core.settings import Settings
from ingest.app import create_app as create_ingest
from stream.app import create_app as create_stream

SERVICES = pytest.mark.parametrize("create_app", [create_ingest, create_stream], ids=["ingest", "stream"])
CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png"}
NOT_VENDORED = {"README.md", "SHA256SUMS"}  # ours: what the files are, where they come from, their sums


class PageReferences(HTMLParser):
    """The URLs a page refers to (src and href attributes, CSS url(...), Swagger UI's url: '...') and its inline
    scripts."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self.script: list[str] | None = None
        self.feed(page)
        self.close()
        self.urls += re.findall(r"url\(\s*['\"]?([^'\")]*)", page)
        self.urls += [url for script in self.inline_scripts for url in re.findall(r"\burl:\s*'([^']*)'", script)]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value is not None]
        self.script = [] if tag == "script" and "src" not in dict(attrs) else None

    def handle_data(self, data: str) -> None:
        if self.script is not None:
            self.script.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self.script is not None:
            self.inline_scripts.append("".join(self.script))
            self.script = None


def recorded_sums() -> dict[str, str]:
    """File name to SHA-256, as SHA256SUMS (``sha256sum`` output) records them."""
    lines = (ASSETS_DIR / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines)}


def policy_of(header: str) -> dict[str, list[str]]:
    """A Content-Security-Policy's directives and their sources."""
    return {name: sources for name, *sources in (part.split() for part in header.split(";"))}


@SERVICES
async def test_docs_load_swagger_ui_from_the_service_only(
    make_settings: Callable[..., Settings], serve: Serve, create_app: Callable[[Settings], Any]
) -> None:
    async with serve(create_app(make_settings())) as url, httpx.AsyncClient() as client:
        page = await client.get(f"{url}/docs")
        assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
        assert "//" not in page.text  # no absolute or scheme-relative URL at all
        references = {urljoin(f"{url}/docs", ref) for ref in PageReferences(page.text).urls}
        assert {urlsplit(ref).netloc for ref in references} == {urlsplit(url).netloc}
        assert f"{url}/openapi.json" in references
        assets = {ref for ref in references if ref != f"{url}/openapi.json"}
        # The script, the stylesheet and the icon, at URLs that name Swagger UI's version (cached for a year).
        assert {Path(urlsplit(ref).path).suffix for ref in assets} == set(CONTENT_TYPES)
        for asset in assets:
            path = urlsplit(asset).path
            assert path.startswith(f"/docs/assets/{swagger_ui_version()}/")
            answer = await client.get(asset)
            assert answer.status_code == 200, asset
            assert answer.headers["content-type"] == CONTENT_TYPES[Path(path).suffix]
            assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.content == (ASSETS_DIR / Path(path).name).read_bytes()
        # Only those files: not another file of the folder, nor one outside it.
        for name in ("LICENSE", "package.json", "SHA256SUMS", "../docs.py", "%2e%2e/docs.py"):
            assert (await client.get(f"{url}/docs/assets/{swagger_ui_version()}/{name}")).status_code == 404, name


@SERVICES
async def test_the_docs_page_may_run_only_its_own_script_and_the_services_files(
    make_settings: Callable[..., Settings], serve: Serve, create_app: Callable[[Settings], Any]
) -> None:
    async with serve(create_app(make_settings())) as url, httpx.AsyncClient() as client:
        page = await client.get(f"{url}/docs")
    policy = policy_of(page.headers["content-security-policy"])
    (script,) = PageReferences(page.text).inline_scripts  # Swagger UI's start, on the service's OpenAPI document
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'", f"'sha256-{digest}'"]  # no 'unsafe-inline', no 'unsafe-eval'
    assert policy["frame-ancestors"] == ["'none'"]
    # Nothing from another host: every source is the page's own origin, none, data: (icons) or a script's hash.
    sources = {source for sources in policy.values() for source in sources}
    assert sources <= {"'self'", "'none'", "data:", f"'sha256-{digest}'"}


@SERVICES
async def test_the_documentation_is_served_unless_turned_off(
    make_settings: Callable[..., Settings], serve: Serve, create_app: Callable[[Settings], Any]
) -> None:
    async with serve(create_app(make_settings(docs=True))) as url, httpx.AsyncClient() as client:
        page = await client.get(f"{url}/docs")
        paths = [urlsplit(urljoin(f"{url}/docs", ref)).path for ref in PageReferences(page.text).urls]
        on = [(await client.get(f"{url}{path}")).status_code for path in ["/docs", *paths]]
        redoc = (await client.get(f"{url}/redoc")).status_code  # ReDoc would load from a CDN: not served
    async with serve(create_app(make_settings(docs=False))) as url, httpx.AsyncClient() as client:
        off = [(await client.get(f"{url}{path}")).status_code for path in ["/docs", *paths]]
    assert "/openapi.json" in paths and len(paths) == 4  # the document, the script, the stylesheet, the icon
    assert (on, redoc, off) == ([200] * 5, 404, [404] * 5)


def test_the_vendored_files_are_those_recorded_from_the_npm_tarball() -> None:
    sums = recorded_sums()
    assert sorted(sums) == sorted(path.name for path in ASSETS_DIR.iterdir() if path.name not in NOT_VENDORED)
    assert {name: hashlib.sha256((ASSETS_DIR / name).read_bytes()).hexdigest() for name in sums} == sums
    # The README records the version the files are of, and where the tarball is, with its integrity to check it by.
    version, readme = swagger_ui_version(), (ASSETS_DIR / "README.md").read_text()
    assert f"`swagger-ui-dist` {version} " in readme
    assert f"https://registry.npmjs.org/swagger-ui-dist/-/swagger-ui-dist-{version}.tgz" in readme
    assert re.search(r"`sha512-[A-Za-z0-9+/]{86}==`", readme)
    assert {"LICENSE", "NOTICE", "swagger-ui-bundle.js.LICENSE.txt"} <= set(sums)  # Apache-2.0: its licence goes too
