"""Writing a pre-framed chunk straight to uvicorn's transport, for the one server this service runs on.

The same event goes to every subscriber; uvicorn's ``send`` would frame it as an HTTP chunk once per
connection and run a coroutine for it. For uvicorn's httptools protocol (pinned in pyproject.toml) the
hub frames each event once and, while the socket takes data at once, writes those same bytes to every
transport. Anything else, a socket that is full or closed, the end of a response, another server or
protocol, goes through the ordinary ASGI ``send``. tests/stream/test_sse.py runs the SSE tests on both
paths.

Measured on a real httptools server with 500 streams, one event written to all at a time (thread CPU of
the loop, the two ways interleaved, three runs): 7.4 to 8.1 µs a connection write against 8.6 to 9.8 µs
through ``send``: 1.3 to 2.1 µs saved per delivered event, a fifth of the lockstep fan-out's cost. The
whole-service benchmark (``python -m bench.run --only fanout``, lockstep, 500 subscribers) varied more
than that on a shared two-CPU machine: 9.1 to 10.8 µs an event with it, 8.2 to 15.4 without.

The same transport also tells whether a stream's client is gone (``transport_closing``), which uvicorn's
httptools protocol does not tell a stream with a request pipelined behind it. On either of uvicorn's
protocols it is what a stream watches and bounds a client that does not read with (``stream_transport``):
the bytes waiting in its write buffer, the kernel's send buffer of its socket (``cap_send_buffer``), and
``abort``, which drops both at once where closing would keep them until the client read them.

Both read uvicorn's internals (``CYCLE_ATTRIBUTES``). The first httptools cycle of
the process is checked for them; if one is missing (a uvicorn upgrade), one warning names it, every
stream is written with ``send`` and only ``http.disconnect`` tells that a client is gone.
tests/stream/test_fastwrite.py fails on such an upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import structlog
from starlette.types import Send
from uvicorn.protocols.http import h11_impl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

log = structlog.get_logger(__name__)

CYCLE_ATTRIBUTES = ("transport", "chunked_encoding")

_internals_present: bool | None = None  # None until the first httptools cycle of the process was checked


def chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk (what uvicorn writes for a body part)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def internals_present(cycle: RequestResponseCycle) -> bool:
    """Whether uvicorn's cycle has everything the writer reads; checked on the first one, logged if not."""
    global _internals_present
    if _internals_present is None:
        missing = [f"RequestResponseCycle.{name}" for name in CYCLE_ATTRIBUTES if not hasattr(cycle, name)]
        _internals_present = not missing
        if missing:
            log.warning("uvicorn_internals_missing", missing=missing, writing_with="ASGI send")
    return _internals_present


def _httptools_cycle(send: Send) -> RequestResponseCycle | None:
    """The httptools cycle whose ``send`` this is, if it has everything read here."""
    cycle = getattr(getattr(send, "__wrapped__", send), "__self__", None)  # through core.cors.AddedHeaders
    if not isinstance(cycle, RequestResponseCycle) or not internals_present(cycle):
        return None
    return cycle


def chunked_transport(send: Send) -> asyncio.Transport | None:
    """The transport a started response's pre-framed chunks may be written to (``takes_now``), or None.

    For a response that has started: whether it is chunked is known then, for good (uvicorn decides it with the
    head), and is not asked again per write.
    """
    cycle = _httptools_cycle(send)
    if cycle is None or not cycle.chunked_encoding:
        return None
    transport: asyncio.Transport = cycle.transport
    return transport


def takes_now(transport: asyncio.Transport) -> bool:
    """Whether a chunk written to ``transport`` now reaches the socket in order, with nothing before it waiting.

    The caller writes only while no ``send`` of its own is under way and before its last ``send`` (``more_body``
    false): then only the transport can say no. A transport holding bytes (the client lags; uvicorn's ``send``
    waits for room) or closing (the client is gone, or the connection is closed under a pipelined request: uvloop
    raises on a write) is left to ``send``. Asking the transport alone, not uvicorn's flow control and cycle flags,
    keeps a delivery to the one object it writes to anyway: with 5,000 streams each object more a delivery reads
    is a cache miss (``Connection.deliver`` inlines this check for the same reason).
    """
    return not transport.is_closing() and not transport.get_write_buffer_size()


def transport_closing(send: Send) -> Callable[[], bool] | None:
    """A function telling whether the connection under ``send`` is closed or closing, or None (not httptools).

    uvicorn's httptools protocol tells only the newest request of a connection that the client went
    away: a stream with a request pipelined behind it never receives ``http.disconnect``. (h11 does
    not read a pipelined request while a response streams, so its streams are told.)
    """
    cycle = _httptools_cycle(send)
    return None if cycle is None else cycle.transport.is_closing


def stream_transport(send: Send) -> asyncio.Transport | None:
    """The transport under uvicorn's ``send`` (httptools or h11 protocol), or None (another server).

    Its write buffer, ``get_extra_info("socket")`` and ``abort`` are asyncio's public API; only finding it
    reads uvicorn's cycle.
    """
    cycle = getattr(getattr(send, "__wrapped__", send), "__self__", None)
    if type(cycle) is h11_impl.RequestResponseCycle:
        transport: asyncio.Transport | None = getattr(cycle, "transport", None)
        return transport
    httptools_cycle = _httptools_cycle(send)
    return None if httptools_cycle is None else httptools_cycle.transport


def cap_send_buffer(transport: asyncio.Transport, size_bytes: int) -> None:
    """Cap the kernel's send buffer of the transport's socket, as nginx's ``sndbuf`` does (the kernel doubles it).

    It also turns off the kernel's growing of that buffer (up to ``net.ipv4.tcp_wmem``'s maximum, 4 MiB on
    most systems): a client that stops reading holds at most twice ``size_bytes`` of kernel memory.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # the client is gone already: nothing to cap
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size_bytes)
