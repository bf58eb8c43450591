"""A real browser for the dashboard's tests: Debian's chromium driven by Playwright, never a downloaded one.

``make test`` installs the ``chromium`` package when it is missing and it runs as root (Makefile, target
``chromium``); a test run without it fails with the command to run, it is never skipped. The paths and the command
here are the Makefile's (tests/stream/test_page_browser.py checks that they agree).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

CHROMIUM_PATHS = (Path("/usr/bin/chromium"), Path("/usr/bin/chromium-headless-shell"))
INSTALL_COMMAND = "apt-get update && apt-get install -y --no-install-recommends chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # screenshots and measurements (git ignores them)
WAIT_MS = 30_000  # generous: the page's conditions are awaited, never timed
expect.set_options(timeout=WAIT_MS)  # Playwright's own default for expect() is 5 s


def chromium_executable() -> Path:
    """Debian's chromium (the full browser first, else its headless shell); fails the test, naming the fix, when
    neither is installed."""
    for path in CHROMIUM_PATHS:
        if os.access(path, os.X_OK):
            return path
    looked = ", ".join(str(path) for path in CHROMIUM_PATHS)
    pytest.fail(
        f"Debian's chromium is not installed (looked for {looked}); as root, run: {INSTALL_COMMAND} "
        "(make test does it when it runs as root)",
        pytrace=False,
    )


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's chromium, headless; Playwright is told never to download a browser of its own."""
    executable = chromium_executable()
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Dashboard:
    """An open dashboard, and what its console said: a policy violation or a script error fails the test."""

    page: Page
    console_errors: list[str] = field(default_factory=list)
    script_errors: list[str] = field(default_factory=list)

    def note(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def check_console(self) -> None:
        """No script error and nothing refused by the Content-Security-Policy (a load the policy forgot)."""
        violations = [text for text in self.console_errors if "Content Security Policy" in text]
        assert (self.script_errors, violations) == ([], [])

    async def hook(self, name: str) -> Any:
        """A field of the page's read-only test hook, ``window.telemetryPage``."""
        return await self.page.evaluate("(name) => window.telemetryPage[name]", name)

    async def wait_for(self, expression: str, arg: Any = None, timeout_ms: float = WAIT_MS) -> None:
        """Until ``expression`` (a function of ``arg`` and the hook ``p``) is true in the page."""
        await self.page.wait_for_function(
            f"(arg) => {{ const p = window.telemetryPage; return !!p && ({expression}); }}",
            arg=arg,
            timeout=timeout_ms,
            polling=100,
        )

    async def received(self) -> list[int]:
        """The seqs of the readings the page received, in order."""
        seqs: list[int] = await self.hook("received")
        return seqs

    async def screenshot(self, name: str) -> Path:
        """A full-page screenshot kept as an artifact of the run."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        await self.page.screenshot(path=str(path), full_page=True)
        return path


@asynccontextmanager
async def dashboard(browser: Browser, url: str, **context_options: Any) -> AsyncIterator[Dashboard]:
    """A new browser context (its own cookies) with the page at ``url`` open."""
    context = await browser.new_context(**context_options)
    try:
        page = await context.new_page()
        opened = Dashboard(page)
        page.on("console", opened.note)
        page.on("pageerror", lambda error: opened.script_errors.append(str(error)))
        await page.goto(url)
        yield opened
        opened.check_console()
    finally:
        await context.close()


def write_artifact(name: str, data: dict[str, Any]) -> Path:
    """A measurement kept as an artifact of the run (JSON)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
