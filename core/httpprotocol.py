"""uvicorn's httptools protocol with the guards against hostile and broken clients that it lacks (uvicorn 0.54).

- **Head timeout.** A request head (request line and headers) must be complete within
  ``request_head_timeout_s`` of the connection's start, or of the previous answer; else the connection
  is closed (after a 408 if part of a head came). uvicorn closes an idle keep-alive connection, but not
  one that never sends a request, nor one that sends a head byte by byte: such sockets piled up until
  the process ran out of file descriptors.
- **Head size.** A head larger than ``max_request_head_bytes`` is answered 431 before httptools buffers
  more of it (a 60 MB header blocked the event loop for seconds).
- **Half-close.** A client that shuts down its sending side after a complete request (``shutdown(SHUT_WR)``)
  still gets the answer: asyncio and uvloop close the transport at EOF unless ``eof_received`` returns
  True. The connection closes once the answer is written. One exception: a stream (an answer of unknown
  length, chunked) already under way ends at EOF, as before. On the wire a half-close and a client
  leaving look the same, and a stream that outlived a departed client would learn of it only at its
  second write after the EOF (the first makes the client's kernel answer with a reset): a dashboard
  that closes an idle stream would hold its connection, and its per-client slot, for up to two
  keep-alive intervals. A stream that had not begun at EOF (a resume waiting for JetStream) is written.
- **One write per answer of known length.** uvicorn writes an answer's head when the app starts it and its body
  when the app sends it: two writes, two system calls and two packets for every short answer (a reading's 202 paid
  8 to 10 µs of its 180 for the second). ``OneWriteCycle`` holds the head of an answer with a ``Content-Length``
  and writes it with the first part of the body. An answer of unknown length (a stream) has its head written at
  once, as before: a dashboard waiting for a resume sees its stream open.
- **Lingering close.** A 431 is written, then the sending side is shut down and what the client still
  sends is read and dropped, up to ``discard_max_bytes`` and ``discard_timeout_s``, before the connection
  closes: closing a socket with unread bytes makes the kernel send a reset, and the client would lose the
  answer.

It relies on uvicorn internals (``HOOKS``, ``INIT_ATTRIBUTES``, ``CYCLE_NAME``). ``protocol_class`` checks them;
if one is missing or no longer set up where it was (an upgrade), it logs one warning and the service runs on plain
uvicorn without these guards. tests/core/test_httpprotocol.py fails on such an upgrade.
"""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import structlog
from starlette.types import Message
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from core.errors import ApiError
from core.lean import LeanEvent, LeanPipeline
from core.settings import Settings

log = structlog.get_logger(__name__)

# What the guards use of uvicorn: methods uvicorn calls at a request's milestones (overridden here), and
# attributes its constructors set (read here). An attribute counts as present if its class's __init__ names it.
HOOKS = ("on_headers_complete", "on_message_complete", "on_response_complete")
CYCLE_NAME = "RequestResponseCycle"  # what uvicorn's on_headers_complete makes a request's cycle of (its module's name)
INIT_ATTRIBUTES: tuple[tuple[type, str], ...] = (
    (HttpToolsProtocol, "loop"),
    (HttpToolsProtocol, "transport"),
    (HttpToolsProtocol, "pipeline"),
    (HttpToolsProtocol, "cycle"),
    (HttpToolsProtocol, "server_state"),
    (HttpToolsProtocol, "flow"),
    (FlowControl, "_is_writable_event"),
    (RequestResponseCycle, "message_event"),
    (RequestResponseCycle, "response_started"),
    (RequestResponseCycle, "chunked_encoding"),
    (RequestResponseCycle, "response_complete"),
    (RequestResponseCycle, "expected_content_length"),
    (RequestResponseCycle, "scope"),
)


class RequestHeadTooLarge(ApiError):
    """The request line and headers are larger than ``max_request_head_bytes``."""

    status = 431
    code = "request_head_too_large"


class RequestHeadTimeout(ApiError):
    """The request head did not arrive complete within ``request_head_timeout_s``."""

    status = 408
    code = "request_timeout"


@dataclass(frozen=True)
class HttpLimits:
    """The bounds a connection's request heads are held to, and those of the lingering close after a refusal."""

    head_timeout_s: float
    max_head_bytes: int
    discard_max_bytes: int
    discard_timeout_s: float

    @classmethod
    def of(cls, settings: Settings) -> HttpLimits:
        """The limits the settings ask for."""
        return cls(
            settings.request_head_timeout_s,
            settings.max_request_head_bytes,
            settings.discard_max_bytes,
            settings.discard_timeout_s,
        )


def missing_internals() -> list[str]:
    """What the guards use of uvicorn and this uvicorn lacks, as ``Class.name``."""
    missing = [f"HttpToolsProtocol.{name}" for name in HOOKS if not callable(getattr(HttpToolsProtocol, name, None))]
    headers_complete = getattr(HttpToolsProtocol, "on_headers_complete", None)
    code = getattr(headers_complete, "__code__", None)
    if callable(headers_complete) and (code is None or CYCLE_NAME not in code.co_names):
        missing.append(f"httptools_impl.{CYCLE_NAME}")
    for owner, name in INIT_ATTRIBUTES:
        init = getattr(owner, "__init__", None)
        names = getattr(getattr(init, "__code__", None), "co_names", ())
        if name not in names:
            missing.append(f"{owner.__name__}.{name}")
    return missing


def protocol_class(http_limits: HttpLimits) -> type[HttpToolsProtocol]:
    """The guarded protocol with these limits, or uvicorn's own (and one warning) if its internals changed."""
    missing = missing_internals()
    if missing:
        log.warning("uvicorn_internals_missing", missing=missing, serving_with="uvicorn's httptools protocol")
        return HttpToolsProtocol

    class ServerProtocol(LimitedHttpProtocol):
        __slots__ = ()
        limits = http_limits
        _start_cycle = making_cycles_of(OneWriteCycle, HttpToolsProtocol.on_headers_complete)

    return ServerProtocol


def making_cycles_of(cycle_class: type[RequestResponseCycle], method: Callable[..., Any]) -> Callable[..., Any]:
    """uvicorn's own ``method``, run where the name ``RequestResponseCycle`` is ``cycle_class``: the request cycles
    it makes are of that class from the start.

    Not a swap of ``__class__`` once uvicorn made one: CPython specializes attribute access on a class's instances by
    the layout of their ``__dict__``, and an instance of one class with the dict of another misses every time (a
    reading's request cost 22,000 instructions more, 4 % of all).
    """
    namespace = {**method.__globals__, CYCLE_NAME: cycle_class}
    made = types.FunctionType(method.__code__, namespace, method.__name__, method.__defaults__, method.__closure__)
    made.__kwdefaults__ = method.__kwdefaults__
    made.__qualname__ = method.__qualname__
    return made


class HeadWrites:
    """What a transport would have been given to write, kept instead (``OneWriteCycle``)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request cycle, writing the head of an answer with a ``Content-Length`` together with its body.

    uvicorn builds and checks the head as always, into ``HeadWrites`` instead of the transport, and the first body
    message carries it: its length is added to what uvicorn expects of the body. Only where uvicorn's ``send`` of the
    head cannot wait (the transport is writable), and not for ``HEAD`` (uvicorn writes no body for it).
    """

    _held_head: bytes = b""

    # Not a coroutine function: it returns uvicorn's own coroutine, so that every other message (a stream's writes)
    # goes through no frame more than before.
    def send(self, message: Message) -> Coroutine[Any, Any, None]:  # type: ignore[override]  # ASGI typed narrowly
        if self._held_head and message["type"] == "http.response.body":
            head, self._held_head = self._held_head, b""
            self.expected_content_length += len(head)
            message = {**message, "body": head + message.get("body", b"")}
        elif message["type"] == "http.response.start" and self._holds(message):
            return self._hold_head(message)
        return super().send(message)  # type: ignore[arg-type]

    async def _hold_head(self, message: Message) -> None:
        transport, self.transport = self.transport, HeadWrites()  # type: ignore[assignment]
        try:
            await super().send(message)  # type: ignore[arg-type]  # does not wait: the transport is writable
            self._held_head = self.transport.data  # type: ignore[attr-defined]
        finally:
            self.transport = transport

    def _holds(self, message: Message) -> bool:
        """Whether the head of this answer waits for its body."""
        if self.response_started or self.flow.write_paused or self.disconnected or self.scope["method"] == "HEAD":
            return False
        return any(name.lower() == b"content-length" for name, _ in message.get("headers", ()))


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head timeout, a head size limit, half-close and a lingering close.

    Its own attributes are slots: uvicorn's protocol sets 28 in the instance's ``__dict__``, and past 30 CPython
    gives up the dict's keys shared with every instance of the class for keys of its own: about 1.2 KB more per
    open connection (bench idle memory).
    """

    __slots__ = ("_discarded", "_discarding", "_eof", "_head_bytes", "_head_due", "_heads", "_in_head", "_timer")

    limits: ClassVar[HttpLimits]
    _start_cycle: ClassVar[Callable[[HttpToolsProtocol], None]]  # uvicorn's on_headers_complete, making cycles of ours

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline = LeanPipeline()  # type: ignore[assignment]  # memory: see core/lean.py
        self._timer: asyncio.TimerHandle | None = None  # the head timeout, or the end of a lingering close
        self._head_due: float | None = None  # when the head awaited must be complete (loop time); None: none is
        self._in_head = True  # the next bytes belong to a request head (no body is being received)
        self._head_bytes = 0  # of the head in progress
        self._heads = 0  # complete heads so far
        self._eof = False  # the client shut down its side: close once the answers are written
        self._discarding = False  # refused: what comes is dropped until the client closes or a bound is passed
        self._discarded = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        flow = self.flow  # made just now: nothing waits on its event yet (memory: see core/lean.py)
        flow._is_writable_event = LeanEvent(flow._is_writable_event.is_set())  # type: ignore[assignment]
        self._expect_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            self._discarded += len(data)
            if self._discarded > self.limits.discard_max_bytes:
                self.transport.close()
            return
        # Only what fits under the limit reaches the parser while a head is in progress; the rest waits until
        # the head is complete, and if it is not, the head is too large.
        while self._in_head and self._head_bytes + len(data) > self.limits.max_head_bytes:
            room = self.limits.max_head_bytes - self._head_bytes
            heads = self._heads
            self._head_bytes += room
            super().data_received(data[:room])
            if self.transport.is_closing():
                return
            if self._heads == heads:
                self._refuse(RequestHeadTooLarge(f"the request head is larger than {self.limits.max_head_bytes} bytes"))
                return
            data = data[room:]
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)

    def eof_received(self) -> bool:  # type: ignore[override]  # uvicorn says None; asyncio allows a bool
        """Keep the connection open for writing if a complete request awaits its answer, unless that answer is a
        stream already under way; else close, as uvicorn does."""
        if self._discarding:
            return False
        cycle = self.cycle
        awaiting = self._in_head and cycle is not None and not cycle.response_complete
        streaming = cycle is not None and cycle.response_started and bool(cycle.chunked_encoding)
        self._eof = awaiting and not streaming
        return self._eof

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._in_head = False
        self._head_due = None  # the timer stays: it finds no head awaited when it fires
        existing = self.cycle
        self._start_cycle()  # uvicorn's, making a OneWriteCycle
        cycle = self.cycle
        if cycle is not None and cycle is not existing:  # made just now: its task has not run (see core/lean.py)
            cycle.message_event = LeanEvent(cycle.message_event.is_set())  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0
        answered_early = self.cycle is not None and self.cycle.response_complete  # before the body ended
        if answered_early and not self.pipeline:
            self._await_head()

    def on_response_complete(self) -> None:
        idle = not self.pipeline  # else uvicorn starts the next request, whose head is complete
        super().on_response_complete()
        if idle and self._in_head:
            self._await_head()

    def _await_head(self) -> None:
        """Nothing left to answer: the next head has ``head_timeout_s``, or after EOF the connection is done."""
        if self.transport.is_closing():
            return
        if self._eof:
            self.transport.close()
        else:
            self._expect_head()

    def _expect_head(self) -> None:
        """The next head is due within ``head_timeout_s``. The timer is armed only if none is: one that fires before
        the head is due arms itself again (a timer made and cancelled for every request: 6,000 instructions of each)."""
        self._head_due = self.loop.time() + self.limits.head_timeout_s
        if self._timer is None:
            self._timer = self.loop.call_at(self._head_due, self._head_timer)

    def _head_timer(self) -> None:
        self._timer = None
        if self._head_due is None:  # a request is being answered; the next _expect_head arms the timer again
            return
        if self._head_due > self.loop.time():
            self._timer = self.loop.call_at(self._head_due, self._head_timer)
            return
        if self.transport.is_closing():
            return
        if self._head_bytes:
            message = f"the request head was not complete within {self.limits.head_timeout_s:g} s"
            self._write_error(RequestHeadTimeout(message))
        self.transport.close()

    def _refuse(self, error: ApiError) -> None:
        """Answer, shut down the sending side, and drop what the client still sends until it closes or a bound."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a head pipelined behind an answer still being written: no room for ours
            return
        self._write_error(error)
        self._discarding = True
        self.transport.write_eof()
        self._arm(self.limits.discard_timeout_s, self.transport.close)

    def _write_error(self, error: ApiError) -> None:
        body = json.dumps(error.body(), separators=(",", ":")).encode()
        head = [b"HTTP/1.1 %d %s\r\n" % (error.status, HTTPStatus(error.status).phrase.encode())]
        head += [b"%s: %s\r\n" % header for header in self.server_state.default_headers]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)

    def _arm(self, delay_s: float, callback: Callable[[], object]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
