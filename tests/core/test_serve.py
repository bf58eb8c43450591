"""The uvicorn settings of core/serve.py: ``X-Forwarded-*`` are believed from the trusted proxies only, and the
rewrite of the scope is done before the app is called, not around it."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
from collections.abc import Awaitable

from starlette.types import Message, Receive, Scope, Send

from core.serve import YOUNG_COLLECTION_THRESHOLD, ForwardedHeaders

PROXY = "10.0.0.1"
FORWARDED = [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https")]


async def receive() -> Message:
    return {"type": "http.disconnect"}


async def send(message: Message) -> None:
    pass


async def test_the_client_and_scheme_come_from_a_trusted_proxy_only_and_the_app_is_handed_back_as_it_answers() -> None:
    answer = asyncio.get_running_loop().create_future()
    seen: list[tuple[object, object]] = []

    def app(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        seen.append((scope["client"], scope["scheme"]))
        return answer

    forwarded = ForwardedHeaders(app, PROXY)
    for peer in (PROXY, "10.0.0.2"):
        scope = {"type": "http", "scheme": "http", "client": (peer, 40000), "headers": list(FORWARDED)}
        # The app's own awaitable: nothing of ForwardedHeaders waits around it while the request is served.
        assert forwarded(scope, receive, send) is answer
    assert seen == [(("203.0.113.7", 0), "https"), (("10.0.0.2", 40000), "http")]


async def test_either_forwarded_header_alone_is_read_and_a_request_without_them_is_left_as_it_came() -> None:
    seen: list[tuple[object, object]] = []

    def app(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        seen.append((scope["client"], scope["scheme"]))
        return asyncio.sleep(0)

    forwarded = ForwardedHeaders(app, PROXY)
    for headers in ([FORWARDED[0]], [FORWARDED[1]], [(b"host", b"telemetry")]):
        scope = {"type": "http", "scheme": "http", "client": (PROXY, 40000), "headers": [(b"accept", b"*/*"), *headers]}
        await forwarded(scope, receive, send)
    assert seen == [(("203.0.113.7", 0), "http"), ((PROXY, 40000), "https"), ((PROXY, 40000), "http")]


def test_a_served_process_collects_its_youngest_objects_less_often() -> None:
    """``serve`` raises the threshold before uvicorn runs (here it does not: its ``run`` reports the thresholds)."""
    program = (
        "import gc\n"
        "import core.serve as serve\n"
        "from core.settings import Settings\n"
        "from ingest.app import create_app\n"
        "serve.DrainingServer.run = lambda self: print(*gc.get_threshold())\n"
        "serve.serve(create_app(Settings()), Settings(), '127.0.0.1', 0)\n"
    )
    ran = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    young, *older = map(int, ran.stdout.split())
    assert young == YOUNG_COLLECTION_THRESHOLD > gc.get_threshold()[0]
    assert older == list(gc.get_threshold()[1:])
