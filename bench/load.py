"""The load generator's sockets: SSE subscribers that count frames, a latency subscriber, and an HTTP poster.

Raw asyncio protocols on purpose: the load generator must cost less per event than the servers it
measures, so a subscriber only counts occurrences of a marker (``b"\\nid: "``) in what it reads,
across chunk boundaries, instead of parsing SSE.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import cast
from urllib.parse import quote

FRAME_MARKER = b"\nid: "
RETRY_MARKER = b"retry:"
SENT_KEY = b'"sent":"'
CONNECT_RETRIES = 5


def stream_request(
    port: int,
    path: str,
    patterns: Iterable[str],
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> bytes:
    """The GET that opens an SSE stream on ``patterns``, with more query ``params`` (``snapshot``, ``since``)."""
    pairs = [("topic", pattern) for pattern in patterns] + list((params or {}).items())
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in pairs)
    lines = [f"GET {path}?{query} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Group:
    """Subscribers opened together: when they are all connected, and when they all got their goal."""

    def __init__(self) -> None:
        self.members: list[Counting] = []
        self.ready = 0
        self.failed: list[str] = []
        self.reached = 0
        self.all_ready = asyncio.Event()
        self.all_reached = asyncio.Event()
        self.expected = 0
        self.received = 0  # frames over all members, kept as they come (cheaper than summing per check)
        self.dropped: list[str] = []  # streams the server ended (a refused stream is a 200 that ends at once)
        self.closing = False
        self._threshold = 0
        self._crossed = asyncio.Event()

    def arm(self, per_member: int) -> None:
        """Expect ``per_member`` more frames on every member from now on."""
        self.reached = 0
        self.all_reached.clear()
        for member in self.members:
            member.goal = member.count + per_member
            member.reached = False

    async def wait_received(self, threshold: int, timeout_s: float) -> bool:
        """Wait until the members have ``threshold`` frames in all; False on timeout."""
        if self.received >= threshold:
            return True
        self._threshold = threshold
        self._crossed.clear()
        try:
            await asyncio.wait_for(self._crossed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def total(self) -> int:
        """Frames counted so far over all members."""
        return sum(member.count for member in self.members)

    def missing(self) -> int:
        """Frames still expected (lost when the wait is over)."""
        return sum(max(0, member.goal - member.count) for member in self.members)

    def extra(self) -> int:
        """Frames beyond the goal (duplicates, or events of another round)."""
        return sum(max(0, member.count - member.goal) for member in self.members)

    def member_ready(self) -> None:
        """A member got its ready marker."""
        self.ready += 1
        if self.ready >= self.expected:
            self.all_ready.set()

    def member_received(self, frames: int) -> None:
        """A member counted more frames."""
        self.received += frames
        if self.received >= self._threshold:
            self._crossed.set()

    def member_reached(self) -> None:
        """A member has its goal."""
        self.reached += 1
        if self.reached >= len(self.members):
            self.all_reached.set()

    def close(self) -> None:
        """Close every connection."""
        self.closing = True
        for member in self.members:
            if member.transport is not None:
                member.transport.close()


class Counting(asyncio.Protocol):
    """One SSE subscriber: sends its GET, waits for ``ready_marker``, then counts frame markers."""

    def __init__(
        self, group: Group, request: bytes, ready_marker: bytes, on_ready: Callable[[], None], goal: int = 0
    ) -> None:
        self.group = group
        self.request = request
        self.ready_marker = ready_marker
        self.on_ready = on_ready
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = b""  # None once connected
        self.tail = b""
        self.count = 0
        self.goal = goal
        self.reached = goal == 0  # armed by Group.arm, or from the start with a goal
        self.reached_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            head = self.head + data
            at = head.find(self.ready_marker)
            if at < 0:
                self.head = head
                if head.startswith(b"HTTP/1.1 ") and not head.startswith(b"HTTP/1.1 200") and b"\r\n\r\n" in head:
                    self.head = None
                    self.group.failed.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                    self.on_ready()
                return
            self.head = None
            data = head[at:]
            self.group.member_ready()
            self.on_ready()
        chunk = self.tail + data
        found = chunk.count(FRAME_MARKER)
        self.tail = chunk[-(len(FRAME_MARKER) - 1) :]
        if not found:
            return
        self.count += found
        self.group.member_received(found)
        if not self.reached and self.count >= self.goal:
            self.reached = True
            self.reached_at = time.perf_counter()
            self.group.member_reached()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head is not None:
            self.group.failed.append(f"closed before connected: {exc or 'EOF'}")
            self.head = None
            self.on_ready()
        elif not self.group.closing:
            self.group.dropped.append(f"ended by the server: {exc or 'EOF'}, last bytes {self.tail!r}")


async def open_group(
    port: int,
    request: bytes,
    count: int,
    *,
    ready_marker: bytes = RETRY_MARKER,
    in_flight: int = 200,
    goal: int = 0,
) -> Group:
    """Open ``count`` subscribers, at most ``in_flight`` not yet connected at a time; returns once all are.

    ``goal``: frames each member should count from its first byte on (a replay starts at once).
    """
    loop = asyncio.get_running_loop()
    group = Group()
    group.expected = count
    if count == 0:
        group.all_ready.set()
        return group
    slots = asyncio.Semaphore(in_flight)

    async def connect_one() -> None:
        await slots.acquire()
        for attempt in range(CONNECT_RETRIES):
            try:
                _transport, member = await loop.create_connection(
                    lambda: Counting(group, request, ready_marker, slots.release, goal), "127.0.0.1", port
                )
            except OSError as err:
                if attempt == CONNECT_RETRIES - 1:
                    group.failed.append(f"connect: {err}")
                    slots.release()
                    return
                await asyncio.sleep(0.1 * (attempt + 1))
            else:
                group.members.append(member)
                return

    await asyncio.gather(*(connect_one() for _ in range(count)))
    await wait_progress(lambda: group.ready + len(group.failed), count, group.all_ready, stall_s=10.0)
    await asyncio.sleep(0.1)  # a refused stream is a 200 with retry and "end", closed at once
    group.failed += group.dropped
    if group.failed:
        group.close()
        raise RuntimeError(f"{len(group.failed)} of {count} subscribers failed, e.g. {group.failed[0]}")
    return group


async def wait_progress(progress: Callable[[], int], goal: int, done: asyncio.Event, *, stall_s: float) -> bool:
    """Wait for ``done``, giving up after ``stall_s`` without progress; returns whether it was reached."""
    last, last_change = progress(), time.monotonic()
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), 0.5)
        except TimeoutError:
            now_value = progress()
            if now_value >= goal:
                return True
            if now_value != last:
                last, last_change = now_value, time.monotonic()
            elif time.monotonic() - last_change > stall_s:
                return False
    return True


class Latency(asyncio.Protocol):
    """A subscriber that reads each reading's send time (tag ``sent``) and records how late it arrived."""

    def __init__(self, request: bytes, window: tuple[float, float], connected: asyncio.Future[None]) -> None:
        self.request = request
        self.window = window
        self.connected = connected
        self.transport: asyncio.Transport | None = None
        self.rest = b""
        self.latencies_s: list[float] = []
        self.outside = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.rest + data
        if not self.connected.done() and RETRY_MARKER in buf:
            self.connected.set_result(None)
        start, end = self.window
        pos = 0
        while True:
            at = buf.find(SENT_KEY, pos)
            if at < 0:
                self.rest = buf[-(len(SENT_KEY) - 1) :]
                return
            value_at = at + len(SENT_KEY)
            close = buf.find(b'"', value_at)
            if close < 0:
                self.rest = buf[at:]
                return
            sent = float(buf[value_at:close])
            if start <= sent < end:
                self.latencies_s.append(now - sent)
            else:
                self.outside += 1
            pos = close + 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(f"stream closed before it started: {exc or 'EOF'}"))


class HttpClient:
    """A keep-alive HTTP/1.1 connection that POSTs JSON; several requests may be pipelined."""

    def __init__(self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.port = port
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> HttpClient:
        """Connect to a loopback port."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(port, reader, writer)

    def send(self, path: str, body: bytes, content_type: str = "application/json") -> None:
        """Write one request without waiting for its answer."""
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: %s\r\nAccept: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.port, content_type.encode(), len(body), body)
        )

    async def response(self) -> tuple[int, bytes]:
        """Read one response: its status and body."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """One request, one answer."""
        self.send(path, body)
        return await self.response()

    async def close(self) -> None:
        """Close the connection."""
        self.writer.close()
        await self.writer.wait_closed()
