"""Writing a pre-framed chunk straight to uvicorn's transport, for the one server this service runs on.

The same event goes to every subscriber; uvicorn's ``send`` would frame it as an HTTP chunk once per
connection and run a coroutine for it. For uvicorn's httptools protocol (pinned in pyproject.toml) the
hub frames each event once and, while the socket takes data at once, writes those same bytes to every
transport. Anything else, a socket that is full, the end of a response, another server or protocol,
goes through the ordinary ASGI ``send``. tests/stream/test_sse.py runs the SSE tests on both paths.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

ChunkWriter = Callable[[bytes], bool]


def chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk (what uvicorn writes for a body part)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def chunk_writer(send: Send) -> ChunkWriter | None:
    """A function writing a framed chunk if it can be written now (else it returns False), or None."""
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not RequestResponseCycle:
        return None
    transport, flow = cycle.transport, cycle.flow

    def write(framed: bytes) -> bool:
        if flow.write_paused or cycle.disconnected or cycle.response_complete or not cycle.chunked_encoding:
            return False
        transport.write(framed)
        return True

    return write
