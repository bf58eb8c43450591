"""Test clients: an SSE subscription as a browser makes it, and helpers to read its events."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

Serve = Callable[..., AbstractAsyncContextManager[str]]
EVENT_TIMEOUT_S = 10.0
STUCK_RECEIVE_BUFFER_BYTES = 4096  # the least the kernel allows, about: the server's bytes stop moving soon


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


@contextmanager
def never_reading(url: str, *topics: str) -> Iterator[socket.socket]:
    """An SSE stream whose client sends its request and never reads (a small receive buffer): a stuck dashboard."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    query = "&".join(f"topic={quote(topic, safe='')}" for topic in topics)
    with socket.socket() as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STUCK_RECEIVE_BUFFER_BYTES)
        stuck.connect((host, int(port)))
        stuck.sendall(f"GET /v1/stream?{query} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        yield stuck


async def read_until_closed(sock: socket.socket, timeout_s: float = EVENT_TIMEOUT_S) -> bytes:
    """What a client that starts reading finds on ``sock``, up to the server's close (an end of file or a reset)."""
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    received = b""
    async with asyncio.timeout(timeout_s):
        try:
            while data := await loop.sock_recv(sock, 65536):
                received += data
        except ConnectionResetError:  # what a cut-off client's socket holds can go with the reset
            pass
    return received
