"""Test clients: an SSE subscription as a browser makes it, and helpers to read its events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

Serve = Callable[..., AbstractAsyncContextManager[str]]
EVENT_TIMEOUT_S = 10.0


@asynccontextmanager
async def events(
    url: str, *topics: str, headers: dict[str, str] | None = None, **params: Any
) -> AsyncIterator[AsyncIterator[ServerSentEvent]]:
    """An SSE subscription as a browser makes it; yields its event iterator."""
    query: list[tuple[str, str]] = [("topic", t) for t in topics] + [(k, str(v)) for k, v in params.items()]
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None)) as client,
        aconnect_sse(client, "GET", f"{url}/v1/stream", params=query, headers=headers or {}) as source,
    ):
        source.response.raise_for_status()
        yield source.aiter_sse()


async def take(
    stream: AsyncIterator[ServerSentEvent], count: int, timeout_s: float = EVENT_TIMEOUT_S
) -> list[ServerSentEvent]:
    """The next ``count`` events that are not just the initial retry hint."""
    received: list[ServerSentEvent] = []

    async def collect() -> None:
        async for event in stream:
            if event.event == "message" and not event.data:
                continue  # the retry hint alone
            received.append(event)
            if len(received) == count:
                return

    await asyncio.wait_for(collect(), timeout_s)
    return received


def seqs(events_: list[ServerSentEvent]) -> list[int]:
    return [int(event.id) for event in events_]


def raw_requests(*targets: str) -> bytes:
    """GET requests (path and query each) as a client writes them on one connection: pipelined when several."""
    return b"".join(f"GET {target} HTTP/1.1\r\nHost: test\r\n\r\n".encode() for target in targets)


async def raw_connection(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain TCP connection to the service at ``url``, for what an HTTP client library would not send."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))
