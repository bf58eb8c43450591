"""One SSE subscriber: its patterns, its limits, the frames waiting to be written, and its place in the stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from starlette.types import Send

from core.readings import control_frame, retry_frame
from core.topics import Pattern
from stream.eager import run_eagerly
from stream.fastwrite import ChunkWriter, chunk, chunk_writer, transport_closing
from stream.limits import Limits, TokenBucket

log = structlog.get_logger(__name__)

REPLAY_HIGH_WATER_BYTES = 256 * 1024


class Connection:
    """Frames for one client, kept in stream order, each reading at most once, written as they come.

    ``last_seq`` only grows: a frame at or below it is dropped, which is what makes the hand-over
    from replay to the live feed free of duplicates. While the connection is replaying, live
    frames are held back and released after the replay, which makes it free of gaps.

    Frames pushed in one loop turn are written together at the end of the turn (``flush``, called
    by the hub), straight from the hub's stack when the socket takes them at once, otherwise by a
    task of this connection's own that finishes the write and writes what piled up meanwhile.

    Live readings beyond the rate limit, or while the client is more than ``max_buffer_bytes``
    behind, are conflated: only the latest reading per topic waits, and goes out when the budget
    allows. A client that stays behind for ``slow_consumer_timeout_s`` is cut off (``abort``).

    A write never raises to its caller: one client's broken transport ends that stream alone
    (``abort``), and the hub's flush of every other connection goes on.
    """

    __slots__ = (
        "_behind_since",
        "_budget",
        "_flush_timer",
        "_held",
        "_latest",
        "_loop",
        "_mark_dirty",
        "_on_conflated",
        "_send",
        "_single_chunk",
        "_transport_closing",
        "_write_chunk",
        "_writer",
        "_writer_readings",
        "buffered_bytes",
        "closed",
        "deadline",
        "dirty",
        "drained",
        "end_reason",
        "ending",
        "events_left",
        "frames",
        "last_seq",
        "last_write",
        "limits",
        "on_abort",
        "on_written",
        "patterns",
        "replaying",
        "unsent_readings",
    )

    def __init__(
        self,
        patterns: list[Pattern],
        *,
        last_seq: int,
        replaying: bool,
        limits: Limits,
        mark_dirty: Callable[[Connection], None],
        on_conflated: Callable[[], None] = lambda: None,
    ) -> None:
        self.patterns = patterns
        self.last_seq = last_seq
        self.replaying = replaying
        self.limits = limits
        self.frames: list[bytes] = []
        self.buffered_bytes = 0
        self.unsent_readings = 0
        self.events_left = limits.max_events or -1
        self.dirty = False
        self.drained = asyncio.Event()
        self.closed = False
        self.ending = False
        self.end_reason: str | None = None
        self.on_abort: Callable[[], object] = lambda: None
        self.on_written: Callable[[int], None] = lambda readings: None
        self._send: Send | None = None
        self._writer: asyncio.Task[None] | None = None
        self._mark_dirty = mark_dirty
        self._on_conflated = on_conflated
        self._held: list[tuple[int, str, bytes]] = []
        self._latest: dict[str, tuple[int, bytes]] = {}
        self._loop = asyncio.get_running_loop()
        self._budget = TokenBucket(limits.rate_per_s)
        self._flush_timer: asyncio.TimerHandle | None = None
        self._behind_since: float | None = None
        self.last_write = time.monotonic()
        self.deadline = float("inf")
        self._writer_readings = 0
        self._write_chunk: ChunkWriter | None = None
        self._single_chunk: bytes | None = None
        self._transport_closing: Callable[[], bool] | None = None

    def open(self, send: Send) -> None:
        """The response has started: frames can be written with ``send`` from now on."""
        self._send = send
        self._write_chunk = chunk_writer(send)
        self._transport_closing = transport_closing(send)
        if self.frames and not self.dirty:
            self.dirty = True
            self._mark_dirty(self)

    def deliver(self, seq: int, topic: str, frame: bytes, now: float, framed: bytes | None = None) -> None:
        """A live reading from the hub: held during a replay, rate limited and conflated otherwise."""
        if self.replaying:
            self._held.append((seq, topic, frame))
        elif seq > self.last_seq and not self.ending:
            self.last_seq = seq
            if self._latest or not self._may_send_now(now):
                self._conflate(topic, seq, frame)
            else:
                self._queue_reading(frame, framed)

    def push_reading(self, seq: int, frame: bytes) -> None:
        """A replayed reading: not rate limited (the replay waits for the client instead), never doubled."""
        if seq > self.last_seq and not self.ending:
            self.last_seq = seq
            self._queue_reading(frame)

    def push(self, frame: bytes, framed: bytes | None = None) -> None:
        """Queue a frame (``framed``: it as an HTTP chunk, if the hub made one); written at the end of the turn."""
        self._single_chunk = framed if not self.frames else None
        self.frames.append(frame)
        self.buffered_bytes += len(frame)
        if not self.dirty and self._send is not None:
            self.dirty = True
            self._mark_dirty(self)

    def stream_recreated(self, first_seq: int, retry_ms: int) -> bool:
        """The stream was deleted and created again, and numbers from ``first_seq`` anew.

        A live client gets ``reset`` (reason ``stream_recreated``) and then the new stream's readings;
        ids before the reset belong to the old stream. A replaying client is ended instead: it resumes.
        Returns whether a ``reset`` was sent.
        """
        if self.replaying:
            self.end("stream_recreated", retry_ms=retry_ms)
            return False
        self.last_seq = first_seq - 1
        self._latest.clear()  # conflated readings of the old stream: never sent after the reset
        self.push(control_frame("reset", {"reason": "stream_recreated", "first_available_id": first_seq}))
        return True

    def finish_replay(self) -> None:
        """Release the live frames held during the replay; those the replay already sent are dropped."""
        self.replaying = False
        held, self._held = self._held, []
        now = time.monotonic()
        for seq, topic, frame in held:
            self.deliver(seq, topic, frame, now)

    def flush(self, now: float) -> int:
        """Write everything pending as one chunk, now, unless a write is still under way.

        Returns how many readings were written at once (those of a write that has to wait are
        counted by ``on_written`` when it completes). Never raises: a write that fails, or finds the
        transport closed, ends this stream (``abort``) and leaves the caller's other connections be.
        """
        self.dirty = False
        if self._writer is not None or self.closed or not self.frames or self._send is None:
            return 0
        frames = self.frames
        readings = self.unsent_readings
        try:  # costs nothing until it catches (Python 3.11+), so it guards each write, not each event
            if self._write_chunk is not None and not self.ending:
                single = self._single_chunk
                if self._write_chunk(single if single is not None and len(frames) == 1 else chunk(b"".join(frames))):
                    self.frames = []
                    self.buffered_bytes = 0
                    self.unsent_readings = 0
                    self._written(now)
                    return readings
            if self.client_gone():  # whatever uvicorn told the handler (see fastwrite.transport_closing)
                self.abort("transport_closed")
                return 0
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            self.frames = []
            self.buffered_bytes = 0
            self.unsent_readings = 0
            message = {"type": "http.response.body", "body": data, "more_body": not self.ending}
            writer = run_eagerly(self._send(message))  # type: ignore[arg-type]
            if writer is None:
                self._written(now)
                return readings
            self._writer = writer
            self._writer_readings = readings
            writer.add_done_callback(self._on_writer_done)
            return 0
        except Exception as err:  # a transport that raises (uvloop's, once closed): this client only
            log.debug("write_failed", error=repr(err))
            self.abort("write_failed")
            return 0

    def _written(self, now: float) -> None:
        self.last_write = now
        if not self.frames:
            self._behind_since = None
        if not self.drained.is_set():
            self.drained.set()
        if self._latest and self._flush_timer is None:
            self._flush_conflated()

    def _on_writer_done(self, task: asyncio.Task[None]) -> None:
        self._writer = None
        if task.cancelled() or task.exception() is not None:
            self.abort("write_failed")  # nothing more if close() cancelled it
            return
        self.on_written(self._writer_readings)
        self._written(time.monotonic())
        if self.frames:
            self.flush(time.monotonic())

    async def wait_drained(self) -> None:
        """Back-pressure for a replay: wait while the client is far behind."""
        while self.buffered_bytes > REPLAY_HIGH_WATER_BYTES and not self.closed:
            self.drained.clear()
            await self.drained.wait()

    def end(self, reason: str, retry_ms: int | None = None) -> None:
        """Send ``retry`` (if given) and ``event: end`` after what is pending, then close the stream."""
        if self.ending or self.closed:
            return
        if retry_ms is not None:
            self.push(retry_frame(retry_ms))
        self.push(control_frame("end", {"reason": reason}))
        self.ending = True
        self.end_reason = reason

    def client_gone(self) -> bool:
        """Whether the stream's transport is closed or closing (False where the server does not tell)."""
        return self._transport_closing is not None and self._transport_closing()

    def abort(self, reason: str) -> None:
        """End the stream now without a word (its client is gone, or cut off), and wake its handler (``on_abort``)."""
        if self.closed:
            return
        self.end_reason = reason
        self.close()
        self.on_abort()

    def close(self) -> None:
        """Write nothing more (the client is gone, or it was cut off); stop any write under way."""
        self.closed = True
        self.drained.set()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._writer is not None:
            self._writer.cancel()

    def _queue_reading(self, frame: bytes, framed: bytes | None = None) -> None:
        self.unsent_readings += 1
        self.push(frame, framed)
        if self.events_left > 0:
            self.events_left -= 1
            if self.events_left == 0:
                self.end("max_events")

    def _behind(self) -> bool:
        """More than ``max_buffer_bytes`` wait behind a write the socket did not take: the client is slow.

        Frames queued in this loop turn are not behind: they are all written at its end.
        """
        return self._writer is not None and self.buffered_bytes > self.limits.max_buffer_bytes

    def _may_send_now(self, now: float) -> bool:
        """Spend a token of the rate budget, unless the client is too far behind to take more now."""
        return not self._behind() and self._budget.take(now)

    def _conflate(self, topic: str, seq: int, frame: bytes) -> None:
        if topic in self._latest:
            self._on_conflated()
        self._latest[topic] = (seq, frame)
        if self._behind():
            now = time.monotonic()
            if self._behind_since is None:
                self._behind_since = now
            elif now - self._behind_since > self.limits.slow_consumer_timeout_s:
                self.abort("slow_consumer")
                return
        if self._flush_timer is None:
            self._flush_timer = self._loop.call_later(self._budget.wait_s(), self._flush_conflated)

    def _flush_conflated(self) -> None:
        """Send conflated readings, oldest first, as far as the budget allows; come back for the rest."""
        self._flush_timer = None
        if self.closed or self.ending:
            return
        now = time.monotonic()
        for topic, (_seq, frame) in sorted(self._latest.items(), key=lambda item: item[1][0]):
            if not self._may_send_now(now):
                break
            del self._latest[topic]
            self._queue_reading(frame)
            if self.ending:
                return
        if self._latest and not self._behind():
            self._flush_timer = self._loop.call_later(self._budget.wait_s(), self._flush_conflated)
