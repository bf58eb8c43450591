"""The dashboard's serving (stream/page.py): the page and its files from the service itself, under a policy that lets
it load nothing else, at URLs named by their contents; the vendored uPlot exactly as recorded. What the page does in
a browser is tests/stream/test_page_browser.py."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
from support.auth import SECRET
from support.sse import Serve

from core.settings import Settings
from stream.app import create_app
from stream.page import ASSETS_DIR, SERVED_ASSETS, Dashboard

UPLOT_DIR = ASSETS_DIR / "uplot"


class References(HTMLParser):
    """The URLs a page refers to (src and href) and whether it has inline script or style."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.urls += [value for name, value in attrs if name in ("src", "href") and value is not None]
        if tag == "style" or "style" in attributes or any(name.startswith("on") for name in attributes):
            self.inline.append(tag)
        if tag == "script" and "src" not in attributes:
            self.inline.append(tag)


def policy_of(header: str) -> dict[str, list[str]]:
    """A Content-Security-Policy's directives and their sources."""
    return {name: sources for name, *sources in (part.split() for part in header.split(";"))}


async def test_the_page_loads_its_files_from_the_service_only_under_a_strict_policy(
    settings: Settings, serve: Serve
) -> None:
    async with serve(create_app(settings)) as url, httpx.AsyncClient() as client:
        page = await client.get(f"{url}/")
        assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
        references = References(page.text)
        assert references.inline == []  # the policy allows no inline script or style: there is none to break
        assert "//" not in page.text.replace("<!doctype", "")
        # What it loads: every reference but the skip link (#...) and the empty icon (data:, which asks no server).
        assets = {urljoin(f"{url}/", ref) for ref in references.urls if not ref.startswith(("data:", "#"))}
        assert {urlsplit(asset).netloc for asset in assets} == {urlsplit(url).netloc}
        assert {urlsplit(asset).path.rsplit("/", 1)[1] for asset in assets} == set(SERVED_ASSETS)
        for asset in assets:
            answer = await client.get(asset)
            assert answer.status_code == 200, asset
            name = urlsplit(asset).path.rsplit("/", 1)[1]
            assert answer.headers["content-type"] == SERVED_ASSETS[name][1]
            assert answer.content == (ASSETS_DIR / SERVED_ASSETS[name][0]).read_bytes()
            assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert answer.headers["x-content-type-options"] == "nosniff"
        unknown = await client.get(f"{url}{Dashboard.load().prefix}/index.html")
        assert unknown.status_code == 404  # only the files named in SERVED_ASSETS are reachable
    policy = policy_of(page.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == policy["style-src"] == policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == policy["base-uri"] == ["'none'"]
    assert page.headers["cache-control"] == "no-cache"  # a new release's digest reaches the browser at once


async def test_the_page_is_served_with_the_api_documentation_off_and_without_credentials(
    make_settings: Callable[..., Settings],
) -> None:
    # It holds no data: its readings come from /v1/stream, which asks for credentials itself.
    app = create_app(make_settings(docs=False, auth="required", jwt_secret=SECRET))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/docs")).status_code == 404
        assert (await client.get("/v1/stream", params={"topic": ">"})).status_code == 401
        page = await client.get("/")
        assert page.status_code == 200 and "Telemetry dashboard" in page.text
        script = await client.get(f"{Dashboard.load().prefix}/app.js")
        assert script.status_code == 200


def test_the_asset_urls_name_their_contents(tmp_path: Path) -> None:
    copy = tmp_path / "page_assets"
    shutil.copytree(ASSETS_DIR, copy)
    before = Dashboard.load(copy)
    assert before.prefix == Dashboard.load().prefix and re.fullmatch(r"/ui/[0-9a-f]{16}", before.prefix)
    assert f'src="{before.prefix}/app.js"'.encode() in before.page
    (copy / "app.js").write_bytes((copy / "app.js").read_bytes() + b"\n// changed\n")
    after = Dashboard.load(copy)
    assert after.prefix != before.prefix  # a browser holding the old file for a year never uses it for the new page
    assert f'src="{after.prefix}/app.js"'.encode() in after.page


def test_uplot_is_the_recorded_release_with_its_licence() -> None:
    lines = (UPLOT_DIR / "SHA256SUMS").read_text().splitlines()
    recorded = {name: digest for digest, name in (line.split("  ", 1) for line in lines)}
    actual = {
        path.relative_to(UPLOT_DIR).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in UPLOT_DIR.rglob("*")
        if path.is_file() and path.name != "SHA256SUMS"
    }
    assert actual == recorded
    assert {"LICENSE", "package.json"} <= set(recorded)
    assert "MIT License" in (UPLOT_DIR / "LICENSE").read_text()
    package = json.loads((UPLOT_DIR / "package.json").read_text())
    readme = (ASSETS_DIR / "README.md").read_text()
    assert (package["name"], package["license"]) == ("uplot", "MIT")
    assert f"`uplot` {package['version']}" in readme
    assert f"uplot-{package['version']}.tgz" in readme
    served = {path for path, _ in SERVED_ASSETS.values() if path.startswith("uplot/")}
    assert {f"uplot/{name}" for name in recorded} >= served
