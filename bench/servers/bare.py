"""The ceiling: a bare uvloop server that encodes each reading once and writes it to every socket.

Readings arrive on a plain NATS subscription to the stream's subjects, so it gets exactly the
messages the ingest service stores (the stream service gets them through a JetStream consumer; the
benchmark subtracts a no-subscriber run, so the receiving side does not count for either). Each GET
is answered with SSE headers and a ``retry`` line and then receives every reading, written as one
pre-encoded HTTP chunk; after each reading the server yields to the loop, like a server that handles
one event per loop turn. No parsing, no routing, no per-connection task: the least a Python server
can do per delivered event.

    python -m bench.servers.bare --port 9000 --nats-url nats://127.0.0.1:4222 --subject 'telemetry.>'
"""

from __future__ import annotations

import asyncio
from typing import cast

import nats
import uvloop
from nats.aio.msg import Msg

from bench.servers.common import reference_args

HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\n"
    b"x-accel-buffering: no\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
RETRY = b"retry: 2000\n\n"


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk, as uvicorn writes for every ``send`` of a streaming body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Subscriber(asyncio.Protocol):
    """Reads the request head, answers with the stream's head, then only receives writes."""

    def __init__(self, clients: set[asyncio.Transport]) -> None:
        self.clients = clients
        self.transport: asyncio.Transport | None = None
        self.request: bytes | None = b""  # None once the stream has started

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        if self.request is None:
            return
        self.request += data
        if b"\r\n\r\n" in self.request and self.transport is not None:
            self.request = None
            self.transport.write(HEAD + chunk(RETRY))
            self.clients.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.clients.discard(self.transport)


async def serve(port: int, nats_url: str, subject: str) -> None:
    """Subscribe first, then listen: once the port accepts, every reading is delivered."""
    clients: set[asyncio.Transport] = set()
    seq = 0

    async def on_reading(msg: Msg) -> None:
        nonlocal seq
        seq += 1
        data = b'{"seq":%d,%s' % (seq, msg.data[1:])
        frame = chunk(b"id: %d\nevent: reading\ndata: %s\n\n" % (seq, data))
        for transport in clients:
            transport.write(frame)
        await asyncio.sleep(0)

    nc = await nats.connect(nats_url, max_reconnect_attempts=-1)
    await nc.subscribe(subject, cb=on_reading)
    await nc.flush()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Subscriber(clients), "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    """Parse the flags and serve until SIGTERM."""
    args = reference_args(__doc__.splitlines()[0])
    uvloop.run(serve(args.port, args.nats_url, args.subject))


if __name__ == "__main__":
    main()
