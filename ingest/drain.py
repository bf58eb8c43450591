"""Answering a request whose body is still coming: the answer first, then the rest of the body read and dropped
(within ``discard_max_bytes`` and ``discard_timeout_s``), then the connection closed.

Closing a socket with unread bytes makes the kernel answer them with a reset, and a client that sends its
whole body before it reads (urllib, requests, most embedded stacks) loses the answer with it: 15 of 20
posts of 2 MiB from urllib saw ``ConnectionResetError`` or ``BrokenPipeError`` instead of the 413. nginx
reads and drops what is left before it closes (its lingering close); so does this, through ASGI
``receive``. uvicorn hands out no more body once a response is complete (httptools' ``on_body`` drops it),
so the answer is written with ``more_body`` and ended only after the drain: a client that reads while it
sends (curl) sees the answer at once. The answer says ``Connection: close``: the client need not send the
rest, and what it sends beyond the bounds is not read (the connection closes; the answer may then be lost).

A client that asked to be told before it sends the body (``Expect: 100-continue``) and was answered before
any of it was read is not invited to send it: the connection closes at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from enum import Enum

from starlette.types import Message, Receive, Scope, Send

CLOSE = (b"connection", b"close")


class Rest(Enum):
    """What is left of the body when the answer starts, and so what is done with it."""

    NONE = "none"  # read to its end, or there is no body: the connection stays as the client asked
    DRAIN = "drain"  # read and drop it, within the bounds, before the answer ends; then close
    ABANDON = "abandon"  # larger than the bound, or not invited yet: close without reading it


class DrainedRequest:
    """One request's ``receive`` and ``send``: they note how much of the body was read, and drain the rest before
    an answer given too early ends."""

    __slots__ = ("_complete", "_max_bytes", "_receive", "_received", "_rest", "_scope", "_send", "_timeout_s")

    def __init__(self, scope: Scope, receive: Receive, send: Send, max_bytes: int, timeout_s: float) -> None:
        self._scope = scope
        self._receive = receive
        self._send = send
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._received = 0
        self._complete = False
        self._rest = Rest.NONE

    async def receive(self) -> Message:
        """The server's ``receive``, counting the body's bytes and noting its end (or the client's)."""
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self._complete = True
        else:
            self._complete = True  # http.disconnect: nothing more will come
        return message

    def send(self, message: Message) -> Awaitable[None]:
        """The server's ``send`` once the body was read to its end (a frame fewer per message, nearly every answer);
        else ``_send_early``."""
        if self._complete:
            return self._send(message)
        return self._send_early(message)

    async def _send_early(self, message: Message) -> None:
        """An answer that starts before the body ended says ``Connection: close`` and ends only once the rest was
        drained."""
        if self._complete:
            await self._send(message)
        elif message["type"] == "http.response.start":
            self._rest = self._rest_of_body()
            if self._rest is not Rest.NONE:
                message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
            await self._send(message)
        elif self._rest is Rest.DRAIN and message["type"] == "http.response.body" and not message.get("more_body"):
            await self._send({**message, "more_body": True})
            await self._drain()
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await self._send(message)

    def _rest_of_body(self) -> Rest:
        length: int | None = None
        chunked = expect_continue = False
        for name, value in self._scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:  # the HTTP server has refused it already; read as if of unknown length
                    chunked = True
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"expect":
                expect_continue = value.lower() == b"100-continue"
        if (length is None and not chunked) or (length is not None and length <= self._received):
            return Rest.NONE
        if expect_continue and not self._received:
            return Rest.ABANDON
        if length is not None and length - self._received > self._max_bytes:
            return Rest.ABANDON
        return Rest.DRAIN

    async def _drain(self) -> None:
        """Read and drop the rest of the body until it ends, or passes ``max_bytes``, or ``timeout_s`` passed."""
        limit = self._received + self._max_bytes
        try:
            async with asyncio.timeout(self._timeout_s):
                while not self._complete and self._received <= limit:
                    await self.receive()
        except TimeoutError:
            pass
