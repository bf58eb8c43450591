"""A connection's writes over real sockets: a broken transport ends that stream alone, on either write path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from starlette.types import Send
from structlog.testing import capture_logs
from support.metrics import metric, metric_becomes
from support.sse import EVENT_TIMEOUT_S, Serve, events, raw_connection, raw_requests, seqs, take

from core.settings import Settings
from stream import connection
from stream.app import create_app
from stream.fastwrite import chunked_transport

BROKEN = "broken=1"
CLOSED_TRANSPORT = "unable to perform operation on <TCPTransport closed=True>; the handler is closed"


class RaisingTransport:
    """Says it is open, but raises on the first reading written to it: an error no check foresees."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        if b"event: reading" in data:
            raise RuntimeError("a transport that fails unforeseen")
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ClosedTransport(RaisingTransport):
    """Closed under the stream (the client is gone) and raising on any write, as uvloop's transport is then."""

    def is_closing(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        raise RuntimeError(CLOSED_TRANSPORT)


def writing_on(transport_class: type[RaisingTransport]) -> Callable[[Send], asyncio.Transport | None]:
    """What Connection.open gets instead of ``chunked_transport``: ``broken=1`` streams are given ``transport_class``
    once their response head is written."""

    def writer(send: Send) -> asyncio.Transport | None:
        cycle = send.__wrapped__.__self__  # type: ignore[attr-defined]  # through the request id's AddedHeaders
        if BROKEN.encode() in cycle.scope["query_string"]:
            cycle.transport = transport_class(cycle.transport)
        return chunked_transport(send)

    return writer


async def open_broken_stream(url: str, stack: contextlib.AsyncExitStack) -> asyncio.StreamReader:
    """A ``broken=1`` stream, closed with ``stack``; returns once the server answered its head."""
    reader, writer = await raw_connection(url)
    stack.push_async_callback(writer.wait_closed)
    stack.callback(writer.close)
    writer.write(raw_requests(f"/v1/stream?topic=s.%3E&{BROKEN}"))
    await reader.readuntil(b"\r\n\r\n")
    return reader


@pytest.mark.parametrize(
    ("http", "transport_class", "reason"),
    [
        ("httptools", RaisingTransport, "write_failed"),  # written straight to the transport (stream/fastwrite.py)
        ("h11", RaisingTransport, "write_failed"),  # written with the ASGI send
        ("httptools", ClosedTransport, "transport_closed"),  # noticed before a write is tried
    ],
)
async def test_a_broken_transport_ends_its_own_stream_and_no_other(
    settings: Settings,
    serve: Serve,
    publish: Any,
    monkeypatch: pytest.MonkeyPatch,
    http: str,
    transport_class: type[RaisingTransport],
    reason: str,
) -> None:
    monkeypatch.setattr(connection, "chunked_transport", writing_on(transport_class))
    with capture_logs() as logs:
        async with serve(create_app(settings), http=http) as url, contextlib.AsyncExitStack() as stack:
            # Several of each, so that a flush of them all meets healthy connections after broken ones.
            healthy = [await stack.enter_async_context(events(url, "s.>")) for _ in range(2)]
            broken = [await open_broken_stream(url, stack) for _ in range(3)]
            healthy += [await stack.enter_async_context(events(url, "s.>")) for _ in range(2)]
            stored = await publish("s", "d", "m", [1.0, 2.0, 3.0])
            for stream in healthy:
                assert seqs(await take(stream, 3)) == stored
            for reader in broken:  # each closed by the server, without a reading
                assert b"event: reading" not in await asyncio.wait_for(reader.read(), EVENT_TIMEOUT_S)
            await metric_becomes(url, f'telemetry_stream_ended_connections_total{{reason="{reason}"}}', 3)
            assert await metric(url, "telemetry_stream_connections_active") == len(healthy)
            more = await publish("s", "d", "m", [4.0])
            for stream in healthy:
                assert seqs(await take(stream, 1)) == more
    assert [entry for entry in logs if CLOSED_TRANSPORT in str(entry)] == []  # never written to once closed
