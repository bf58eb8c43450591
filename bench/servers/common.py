"""What the Python reference servers share: their flags, and for the two FastAPI ones the fan-out of
each reading into one ``asyncio.Queue`` per client and the same uvicorn settings as the stream service."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import nats
import uvicorn
from nats.aio.msg import Msg

from bench.procs import raise_fd_limit

Event = TypeVar("Event")


def reference_args(description: str) -> argparse.Namespace:
    """``--port``, ``--nats-url`` and ``--subject``; raises the open-file limit for thousands of clients."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--subject", default="telemetry.>")
    args = parser.parse_args()
    raise_fd_limit()
    return args


class QueueFanout(Generic[Event]):
    """Each reading from NATS made into one event (``make_event(seq, data)``), put in every client's queue."""

    def __init__(self, nats_url: str, subject: str, make_event: Callable[[int, str], Event]) -> None:
        self.queues: set[asyncio.Queue[Event]] = set()
        self._nats_url = nats_url
        self._subject = subject
        self._make_event = make_event
        self._seq = 0

    async def _on_reading(self, msg: Msg) -> None:
        self._seq += 1
        event = self._make_event(self._seq, f'{{"seq":{self._seq},{msg.data[1:].decode()}')
        for queue in self.queues:
            queue.put_nowait(event)

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """The app's lifespan: the NATS subscription runs while the app does."""
        nc = await nats.connect(self._nats_url, max_reconnect_attempts=-1)
        await nc.subscribe(self._subject, cb=self._on_reading)
        await nc.flush()
        yield
        await nc.close()

    @asynccontextmanager
    async def queue(self) -> AsyncIterator[asyncio.Queue[Event]]:
        """One client's queue, for as long as its stream is open."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self.queues.add(queue)
        try:
            yield queue
        finally:
            self.queues.discard(queue)


def serve_with_uvicorn(description: str, create_app: Callable[[str, str], Any]) -> None:
    """Parse the flags, then serve ``create_app(nats_url, subject)`` with uvicorn, uvloop and httptools on
    loopback, as the stream service runs; until SIGTERM."""
    args = reference_args(description)
    uvicorn.run(
        create_app(args.nats_url, args.subject),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=1,
    )
