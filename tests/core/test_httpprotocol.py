"""The HTTP connection limits of core/httpprotocol.py, over raw sockets against both services.

A request head has a time and a size limit, a half-closed client still gets its answer, and the protocol
is uvicorn's own (with one warning) when uvicorn no longer has what the guards rely on.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from structlog.testing import capture_logs
from support.net import send_until_closed
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from core import httpprotocol
from core.frontroutes import FrontRoutedApp
from core.httpprotocol import HttpLimits, LimitedHttpProtocol, missing_internals, protocol_class
from core.lean import LeanEvent, LeanPipeline
from core.serve import server_config
from core.settings import Settings
from ingest.app import create_app as create_ingest
from stream.app import create_app as create_stream

Serve = Callable[..., AbstractAsyncContextManager[str]]
CLOSED_WITHIN_S = 30.0  # far beyond any bound set here, on a loaded machine
HEAD_LIMIT = 4096
SERVICES = pytest.mark.parametrize("create_app", [create_ingest, create_stream], ids=["ingest", "stream"])


@asynccontextmanager
async def served(
    create_app: Callable[[Settings], FastAPI], settings: Settings, serve: Serve
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """The service with its settings' limits, and a raw connection to it."""
    async with serve(create_app(settings), http_limits=HttpLimits.of(settings)) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            yield reader, writer
        finally:
            writer.close()
            await writer.wait_closed()


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    received = b""
    async with asyncio.timeout(CLOSED_WITHIN_S):
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def answer(received: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one HTTP answer."""
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


def head_of(size: int) -> bytes:
    """A ``GET /healthz`` head of exactly ``size`` bytes."""
    start = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Padding: "
    return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"


@SERVICES
async def test_a_connection_that_sends_nothing_is_closed(
    create_app: Callable[[Settings], FastAPI], make_settings: Callable[..., Settings], serve: Serve
) -> None:
    settings = make_settings(request_head_timeout_s=0.5)
    async with served(create_app, settings, serve) as (reader, _):
        assert await until_closed(reader) == b""  # nothing to answer: closed without a word


@SERVICES
async def test_a_head_that_does_not_end_is_answered_408_and_closed(
    create_app: Callable[[Settings], FastAPI], make_settings: Callable[..., Settings], serve: Serve
) -> None:
    settings = make_settings(request_head_timeout_s=0.5)
    async with served(create_app, settings, serve) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")  # and never the blank line
        status, headers, body = answer(await until_closed(reader))
    assert status == 408
    assert headers["connection"] == "close"
    assert json.loads(body)["error"] == {
        "code": "request_timeout",
        "message": "the request head was not complete within 0.5 s",
    }


@SERVICES
async def test_the_next_head_on_a_kept_alive_connection_has_the_same_bound(
    create_app: Callable[[Settings], FastAPI], make_settings: Callable[..., Settings], serve: Serve
) -> None:
    # uvicorn's own keep-alive timeout stops at the first byte of the next request; the head timeout does not.
    settings = make_settings(request_head_timeout_s=0.5)
    async with served(create_app, settings, serve) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        first = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(answer(first)[1]["content-length"]))
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        status, _, _ = answer(await until_closed(reader))
    assert answer(first)[0] == 200
    assert status == 408


@SERVICES
async def test_a_head_over_the_limit_is_431_and_one_at_the_limit_is_served(
    create_app: Callable[[Settings], FastAPI], make_settings: Callable[..., Settings], serve: Serve
) -> None:
    settings = make_settings(max_request_head_bytes=HEAD_LIMIT)
    async with served(create_app, settings, serve) as (reader, writer):
        writer.write(head_of(HEAD_LIMIT))
        at_limit = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(answer(at_limit)[1]["content-length"]))
        writer.write(head_of(HEAD_LIMIT + 1))
        status, headers, body = answer(await until_closed(reader))
    assert answer(at_limit)[0] == 200
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == {
        "code": "request_head_too_large",
        "message": f"the request head is larger than {HEAD_LIMIT} bytes",
    }


@SERVICES
async def test_a_1_mib_header_is_read_to_its_end_and_answered_431(
    create_app: Callable[[Settings], FastAPI], settings: Settings, serve: Serve
) -> None:
    # The client sends all of it before it reads: the server drops the rest (a lingering close), else the
    # client's kernel would receive a reset and throw the answer away.
    async with served(create_app, settings, serve) as (reader, writer):
        writer.write(head_of(1 << 20))
        await writer.drain()
        status, _, body = answer(await until_closed(reader))
    assert status == 431
    assert json.loads(body)["error"]["code"] == "request_head_too_large"


@SERVICES
async def test_a_head_that_never_ends_is_dropped_no_further_than_the_bound(
    create_app: Callable[[Settings], FastAPI], make_settings: Callable[..., Settings], serve: Serve
) -> None:
    settings = make_settings(max_request_head_bytes=HEAD_LIMIT, discard_max_bytes=1 << 20)
    head = b"GET /healthz HTTP/1.1\r\nX-Endless: "
    async with serve(create_app(settings), http_limits=HttpLimits.of(settings)) as url:
        sent = await asyncio.to_thread(send_until_closed, url, head, b"x" * (1 << 20), 200 << 20)
    assert sent < 64 << 20  # the bound plus what the kernels' socket buffers hold, never 200 MiB


def send_then_shut(writer: asyncio.StreamWriter, request: bytes) -> None:
    """Send ``request`` and shut down the sending side, in one TCP segment: the server reads EOF with the request,
    before it can answer, whatever the timing."""
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    writer.write(request)
    writer.write_eof()


@pytest.mark.parametrize("query", [b"topic=a.b.c", b"topic=a.b.c&last_event_id=0"], ids=["new", "resume"])
async def test_a_half_closed_client_gets_a_stream_that_had_not_begun(
    settings: Settings, serve: Serve, query: bytes
) -> None:
    # The EOF, which came with the request, is read before the stream begins (a resume begins only once
    # JetStream told where it starts): the stream is written, its retry first.
    async with served(create_stream, settings, serve) as (reader, writer):
        send_then_shut(writer, b"GET /v1/stream?%s HTTP/1.1\r\nHost: test\r\n\r\n" % query)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSED_WITHIN_S)
        first_chunk = await asyncio.wait_for(reader.readuntil(b"\n\n"), CLOSED_WITHIN_S)
    assert answer(head)[0] == 200
    assert first_chunk.split(b"\r\n", 1)[1] == b"retry: %d\n\n" % settings.retry_ms


async def test_eof_ends_a_stream_under_way_at_once(serve: Serve) -> None:
    # A client leaving and a half-close look the same; a stream that outlived a departed client would hold
    # its connection until its second write after the EOF.
    told: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def stream(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"begun", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        loop.call_soon_threadsafe(told.put_nowait, "http.disconnect")

    app = FrontRoutedApp()
    app.front_routes[("GET", "/stream")] = stream
    async with serve(app, ready=False) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"begun\r\n"), CLOSED_WITHIN_S)
        writer.write_eof()
        received = await until_closed(reader)
        writer.close()
        assert await asyncio.wait_for(told.get(), CLOSED_WITHIN_S) == "http.disconnect"
    assert received == b""


async def test_a_half_closed_client_gets_its_answer_and_the_connection_closes(settings: Settings, serve: Serve) -> None:
    body = json.dumps({"device": "d", "metric": "m", "value": 1.5}).encode()
    async with served(create_ingest, settings, serve) as (reader, writer):
        send_then_shut(
            writer,
            b"POST /v1/readings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
        )
        status, _, answered = answer(await until_closed(reader))
    assert status == 202
    assert json.loads(answered)["results"][0]["topic"] == "default.d.m"


def test_the_guards_find_what_they_rely_on_in_the_pinned_uvicorn() -> None:
    # Fails on a uvicorn upgrade that renames or stops setting up what core/httpprotocol.py uses: read what
    # changed, adapt the protocol, and update HOOKS or INIT_ATTRIBUTES.
    assert missing_internals() == []
    with capture_logs() as logs:
        chosen = protocol_class(HttpLimits.of(Settings()))
    assert issubclass(chosen, LimitedHttpProtocol)
    assert [entry for entry in logs if entry["event"] == "uvicorn_internals_missing"] == []


@pytest.mark.parametrize("hook", httpprotocol.HOOKS)
def test_without_a_hook_the_service_runs_on_plain_uvicorn_with_one_warning(
    hook: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(HttpToolsProtocol, hook)
    with capture_logs() as logs:
        chosen = protocol_class(HttpLimits.of(Settings()))
    assert chosen is HttpToolsProtocol
    assert [entry["missing"] for entry in logs if entry["event"] == "uvicorn_internals_missing"] == [
        [f"HttpToolsProtocol.{hook}"]
    ]


def test_a_uvicorn_that_makes_its_cycles_otherwise_is_served_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    def on_headers_complete(self: Any) -> None:
        self.cycle = None  # no longer by the name RequestResponseCycle: the one-write cycle cannot be put in

    monkeypatch.setattr(HttpToolsProtocol, "on_headers_complete", on_headers_complete)
    assert missing_internals() == ["httptools_impl.RequestResponseCycle"]
    with capture_logs():
        assert protocol_class(HttpLimits.of(Settings())) is HttpToolsProtocol


def test_an_attribute_no_longer_set_up_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        self.renamed_pipeline = None

    monkeypatch.setattr(httpprotocol, "INIT_ATTRIBUTES", ((type("Protocol", (), {"__init__": init}), "pipeline"),))
    assert missing_internals() == ["Protocol.pipeline"]


@pytest.mark.parametrize(("http", "guarded"), [("auto", True), ("httptools", True), ("h11", False)])
def test_the_services_are_served_with_the_guarded_protocol_but_on_h11(http: str, guarded: bool) -> None:
    limits = HttpLimits.of(Settings(max_request_head_bytes=HEAD_LIMIT))
    config = server_config(FastAPI(), "127.0.0.1", 0, 1, "127.0.0.1", limits, http=http)
    assert (isinstance(config.http, type) and issubclass(config.http, LimitedHttpProtocol)) is guarded
    assert config.h11_max_incomplete_event_size == HEAD_LIMIT


async def test_an_open_connection_keeps_its_attributes_in_the_class_shared_dict_and_slots() -> None:
    """Past 30 attributes in an instance's dict CPython gives it keys of its own (bench idle memory: +1.2 KB per
    open connection): the guards' attributes are slots, uvicorn's stay at most 30."""
    config = server_config(FastAPI(), "127.0.0.1", 0, 1, "127.0.0.1", HttpLimits.of(Settings()))
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    assert isinstance(protocol, LimitedHttpProtocol)
    assert not set(LimitedHttpProtocol.__slots__) & set(vars(protocol))
    assert len(vars(protocol)) <= 30, sorted(vars(protocol))
    ours, theirs = socket.socketpair()
    with theirs:
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, ours)
        theirs.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(theirs, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(loop.sock_recv(theirs, 4096), 10)
        assert answer.startswith(b"HTTP/1.1 404") and protocol.cycle is not None
        # No asyncio.Event or deque (a 64-slot block each, about 860 bytes) for as long as a stream is open.
        assert isinstance(protocol.pipeline, LeanPipeline)
        assert isinstance(protocol.flow._is_writable_event, LeanEvent)
        assert isinstance(protocol.cycle.message_event, LeanEvent)
        transport.close()


class RecordedWrites:
    """A transport that notes every write it is given before it writes it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


@asynccontextmanager
async def recorded_connection(app: FastAPI) -> AsyncIterator[tuple[socket.socket, RecordedWrites]]:
    """A connection of the guarded protocol serving ``app``: the client's socket and the server's writes."""
    config = server_config(app, "127.0.0.1", 0, 1, "127.0.0.1", HttpLimits.of(Settings()))
    config.load()
    loop = asyncio.get_running_loop()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    ours, theirs = socket.socketpair()
    with theirs:
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, ours)
        recorded = RecordedWrites(transport)  # type: ignore[arg-type]
        protocol.transport = recorded  # type: ignore[assignment]  # what the request's cycle writes to
        theirs.setblocking(False)
        try:
            yield theirs, recorded
        finally:
            transport.close()


async def read_until(sock: socket.socket, end: bytes) -> bytes:
    """What the server sends, until ``end`` arrived."""
    received = b""
    async with asyncio.timeout(CLOSED_WITHIN_S):
        while not received.endswith(end):
            received += await asyncio.get_running_loop().sock_recv(sock, 65536)
    return received


@pytest.mark.parametrize("method", [b"GET", b"POST"])
async def test_an_answer_of_known_length_is_written_whole_in_one_write(method: bytes) -> None:
    # uvicorn writes head and body apart: two system calls and two packets for every short answer.
    async def fixed(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"saved"})

    app = FrontRoutedApp()
    app.front_routes[(method.decode(), "/fixed")] = fixed
    async with recorded_connection(app) as (client, server):
        await asyncio.get_running_loop().sock_sendall(
            client, b"%s /fixed HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % method
        )
        received = await read_until(client, b"saved")
    assert server.writes == [received]
    assert answer(received)[:1] == (202,) and received.endswith(b"\r\n\r\nsaved")


async def test_the_head_of_a_stream_and_of_a_head_request_is_written_at_once() -> None:
    # A dashboard whose resume waits for JetStream sees its stream open; HEAD has no body to carry its head.
    release = asyncio.Event()

    async def stream(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await release.wait()
        await send({"type": "http.response.body", "body": b"later"})

    async def described(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await release.wait()
        await send({"type": "http.response.body", "body": b""})

    app = FrontRoutedApp()
    app.front_routes[("GET", "/stream")] = stream
    app.front_routes[("HEAD", "/described")] = described
    for request in (b"GET /stream", b"HEAD /described"):
        release.clear()
        async with recorded_connection(app) as (client, server):
            await asyncio.get_running_loop().sock_sendall(client, b"%s HTTP/1.1\r\nHost: x\r\n\r\n" % request)
            head = await read_until(client, b"\r\n\r\n")
            assert answer(head)[0] == 200 and server.writes == [head]
            release.set()
