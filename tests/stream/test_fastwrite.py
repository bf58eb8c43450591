"""The direct chunk writer and the stream's transport against real uvicorn connections: in use on the pinned uvicorn,
off when uvicorn changes.

stream/fastwrite.py reads uvicorn's internals; these tests fail when an upgrade takes away what it reads.
"""

from __future__ import annotations

import asyncio
import copy
import socket
from collections.abc import Callable
from typing import Any, cast

import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from structlog.testing import capture_logs
from support.server import on_server_loop
from support.sse import Serve, events, take
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from core.frontroutes import FrontRoutedApp
from core.settings import Settings
from stream import connection, fastwrite
from stream.app import create_app
from stream.fastwrite import (
    CYCLE_ATTRIBUTES,
    chunk,
    chunked_transport,
    stream_transport,
    takes_now,
    transport_closing,
)


async def test_on_the_pinned_uvicorn_events_are_written_straight_to_the_transport(
    settings: Settings, serve: Serve, publish: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[bytes] = []

    class Recording:
        """The real transport, its writes recorded."""

        def __init__(self, transport: asyncio.Transport) -> None:
            self.transport = transport

        def write(self, data: bytes) -> None:
            self.transport.write(data)
            written.append(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.transport, name)

    def recording_transport(send: Send) -> asyncio.Transport | None:
        transport = chunked_transport(send)
        return None if transport is None else cast(asyncio.Transport, Recording(transport))

    monkeypatch.setattr(fastwrite, "_internals_present", None)  # checked on this test's first connection
    monkeypatch.setattr(connection, "chunked_transport", recording_transport)
    with capture_logs() as logs:
        async with serve(create_app(settings), http="httptools") as url, events(url, "s.>") as stream:
            [seq] = await publish("s", "d", "m", [1.5])
            [event] = await take(stream, 1)
    assert event.id == str(seq)
    assert [framed for framed in written if b"id: %d\n" % seq in framed]  # the event went through the writer
    assert fastwrite._internals_present is True
    assert [entry for entry in logs if entry["event"] == "uvicorn_internals_missing"] == []


def lacking(cycle: RequestResponseCycle, name: str) -> RequestResponseCycle:
    """A copy of a live cycle without one attribute."""
    other = copy.copy(cycle)
    delattr(other, name)
    return other


async def test_a_cycle_that_lacks_what_the_writer_reads_gets_no_writer_and_a_closed_transport_no_write(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes: dict[str, object] = {}

    async def probe(scope: Scope, receive: Receive, send: Send) -> None:
        cycle = send.__wrapped__.__self__  # type: ignore[attr-defined]  # through the request id's AddedHeaders
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for name in CYCLE_ATTRIBUTES:
            fastwrite._internals_present = None
            outcomes[name] = chunked_transport(cast(Send, lacking(cycle, name).send))
            fastwrite._internals_present = None
            outcomes[f"closing, lacking {name}"] = transport_closing(cast(Send, lacking(cycle, name).send))
            fastwrite._internals_present = None
            outcomes[f"transport, lacking {name}"] = stream_transport(cast(Send, lacking(cycle, name).send))
        outcomes["complete, after a failed check"] = chunked_transport(send)  # checked once per process
        fastwrite._internals_present = None
        transport, closing = chunked_transport(send), transport_closing(send)
        assert transport is cycle.transport and closing is not None
        outcomes["takes now"] = takes_now(transport)
        transport.write(chunk(b"fast"))
        outcomes["closing"] = closing()
        cycle.transport.close()
        outcomes["takes after close"] = takes_now(transport)
        outcomes["closing after close"] = closing()

    app = FrontRoutedApp()
    app.front_routes[("GET", "/probe")] = probe
    monkeypatch.setattr(fastwrite, "_internals_present", None)
    with capture_logs() as logs:
        async with serve(app, ready=False, http="httptools") as url:
            port = int(url.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /probe HTTP/1.1\r\nHost: test\r\n\r\n")
            received = await asyncio.wait_for(reader.read(), 10)  # until the probe closes the connection
            writer.close()

    missing = [f"RequestResponseCycle.{name}" for name in CYCLE_ATTRIBUTES]
    assert outcomes == {
        **{name: None for name in CYCLE_ATTRIBUTES},
        **{f"closing, lacking {name}": None for name in CYCLE_ATTRIBUTES},
        **{f"transport, lacking {name}": None for name in CYCLE_ATTRIBUTES},
        "complete, after a failed check": None,
        "takes now": True,
        "closing": False,
        "takes after close": False,
        "closing after close": True,
    }
    assert [entry["missing"] for entry in logs if entry["event"] == "uvicorn_internals_missing"] == [
        [name] for name in missing for _ in ("writer", "closing", "transport")
    ]
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"4\r\nfast\r\n"


async def test_a_response_of_known_length_gets_no_writer(serve: Serve) -> None:
    outcomes: dict[str, object] = {}

    async def probe(scope: Scope, receive: Receive, send: Send) -> None:
        head = [(b"content-type", b"text/plain"), (b"content-length", b"4")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        outcomes["writer"] = chunked_transport(send)  # not chunked: written with send, its length checked by uvicorn
        outcomes["transport"] = stream_transport(send) is not None
        await send({"type": "http.response.body", "body": b"done"})

    app = FrontRoutedApp()
    app.front_routes[("GET", "/probe")] = probe
    async with serve(app, ready=False, http="httptools") as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /probe HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        received = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert outcomes == {"writer": None, "transport": True}
    assert received.endswith(b"\r\n\r\ndone")


@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_a_streams_socket_gets_the_send_buffer_of_the_settings(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any, http: str
) -> None:
    send_buffer_bytes = 48 << 10
    app = create_app(make_settings(sse_send_buffer_bytes=send_buffer_bytes))
    async with serve(app, http=http) as url, events(url, "s.>") as stream:
        await take(stream, len(await publish("s", "d", "m", [1.0])))  # the stream is under way
        sizes = await on_server_loop(app, send_buffer_sizes(app))
    assert sizes == [2 * send_buffer_bytes]  # the one connection open: Linux doubles what it is given


async def send_buffer_sizes(app: FastAPI) -> list[int]:
    """SO_SNDBUF of every connection the server has open."""
    connections = app.state.test_server.server_state.connections
    return [
        protocol.transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        for protocol in connections
    ]
