"""A stream followed from another origin's page (CORS): readable there, and still written straight to the transport."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from httpx_sse import aconnect_sse
from support.server import on_server_loop
from support.sse import Serve, take

from core.settings import Settings
from stream.app import create_app as create_stream

PAGE = "https://dashboard.example"


async def test_a_cross_origin_stream_is_readable_and_still_written_straight_to_the_transport(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any
) -> None:
    settings = make_settings(cors_origins=[PAGE])
    app = create_stream(settings)
    async with (
        serve(app) as url,
        httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None)) as client,
        aconnect_sse(client, "GET", f"{url}/v1/stream", params={"topic": "s.>"}, headers={"Origin": PAGE}) as source,
    ):
        stored = await publish("s", "d", "m", [1.0, 2.0])
        received = await take(source.aiter_sse(), len(stored))
        direct = await on_server_loop(app, written_directly(app))
    assert [int(event.id) for event in received] == stored
    assert source.response.headers["access-control-allow-origin"] == PAGE
    assert source.response.headers["access-control-allow-credentials"] == "true"
    assert direct == [True]  # stream/fastwrite.py looked through the send that adds the CORS headers


async def written_directly(app: Any) -> list[bool]:
    """For each open stream, whether its events are written straight to the transport."""
    return [connection._direct is not None for connection in app.state.hub.connections]
