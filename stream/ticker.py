"""The once-a-tick rounds over every open stream: keep-alives, lifetimes and token expiries, clients gone unnoticed,
and slow consumers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection

from core.readings import KEEPALIVE_FRAME
from core.settings import Settings
from stream.connection import Connection

MAX_INTERVAL_S = 1.0


class Ticker:
    """Keep-alive comments for quiet streams, the end of those past their deadline (their lifetime, or their token's
    expiry: ``Connection.end_at``), and the end of those whose client is gone, for all at once a few times per
    keep-alive interval (one timer, not one per stream).

    A client can vanish without its handler being told: uvicorn's httptools protocol tells only a
    request pipelined behind the stream. Its transport still says so (``Connection.client_gone``): such a
    stream is ended (``transport_closed``) and gives its slots back at the next tick.

    A client that stops reading is noticed here too, whether or not events still come for it: a stream
    whose bytes have waited ``slow_consumer_timeout_s`` with none reaching the client's socket
    (``Connection.stalled_for``) is cut (``slow_consumer``), also one that is ending already.
    """

    def __init__(self, connections: Collection[Connection], settings: Settings) -> None:
        self._connections = connections
        self._keepalive_s = settings.keepalive_s
        self._slow_consumer_timeout_s = settings.slow_consumer_timeout_s
        self._interval_s = min(
            MAX_INTERVAL_S,
            settings.keepalive_s / 4,
            settings.slow_consumer_timeout_s / 4,
            settings.max_lifetime_s / 10 or MAX_INTERVAL_S,
        )
        self.keepalives_sent = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Tick in the background until ``stop``."""
        self._task = asyncio.create_task(self._run(), name="stream-ticker")

    async def stop(self) -> None:
        """Stop ticking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self._tick(time.monotonic())

    def _tick(self, now: float) -> None:
        """One round over every stream; ending one only schedules its handler, so none leaves the set meanwhile."""
        keepalive_s, slow_s = self._keepalive_s, self._slow_consumer_timeout_s
        for connection in self._connections:
            if connection.closed:
                continue
            if connection.client_gone():
                connection.abort("transport_closed")
            elif connection.stalled_for(now) >= slow_s:
                connection.cut("slow_consumer")
            elif connection.ending:
                continue
            elif now >= connection.deadline:
                connection.end(connection.deadline_reason)
            elif now - connection.last_write >= keepalive_s and not connection.frames:
                connection.push(KEEPALIVE_FRAME)
                self.keepalives_sent += 1
