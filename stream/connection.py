"""One SSE subscriber: its patterns, the frames waiting to be written, the writes, and its place in the stream."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence

import structlog
from starlette.types import Send

from core.lean import LeanEvent
from core.readings import READING_PREFIX, control_frame, retry_frame
from core.topics import Pattern
from stream.eager import run_eagerly
from stream.fastwrite import (
    cap_send_buffer,
    chunk,
    chunked_transport,
    stream_transport,
    takes_now,
    transport_closing,
)
from stream.latency import first_live
from stream.limits import Limits
from stream.metrics import StreamMetrics
from stream.pacing import Pacer
from stream.slowconsumer import PendingBudget, Progress

log = structlog.get_logger(__name__)

REPLAY_HIGH_WATER_BYTES = 256 * 1024


class Connection:
    """Frames for one client, kept in stream order, each reading at most once, written as they come.

    ``last_seq`` only grows: a frame at or below it is dropped, which is what makes the hand-over
    from replay to the live feed free of duplicates. While the connection is replaying, live
    frames are held back and released after the replay, which makes it free of gaps.

    Frames pushed in one loop turn are written together at the end of the turn (``flush``, called
    by the hub), straight from the hub's stack when the socket takes them at once, otherwise by a
    task of this connection's own that finishes the write and writes what piled up meanwhile. A live
    reading alone in its turn with nothing before it is written as it is delivered (``deliver``).

    Live readings beyond the rate limit, or while more than ``max_buffer_bytes`` wait behind a write
    the socket did not take, are conflated (``pacer``): only the latest reading per topic waits.

    What it has waiting (``pending_bytes``: queued frames, a write under way, the transport's buffer,
    conflated and held-back readings) is counted in the process's ``PendingBudget`` as it changes.
    Bytes that stop reaching the client are the ticker's to notice (``stalled_for``); a client that does
    not keep up is ended (``cut``), and one that is gone, or whose write failed, is dropped (``abort``).
    A write never raises to its caller: one client's broken transport ends that stream alone, and the
    hub's flush of every other connection goes on.
    """

    __slots__ = (
        "_budget",
        "_bytes_tally",
        "_conflating",
        "_direct",
        "_held",
        "_held_bytes",
        "_latency",
        "_mark_dirty",
        "_replayed_tally",
        "_send",
        "_sent_bytes",
        "_single_chunk",
        "_transport",
        "_transport_bytes",
        "_transport_chunk",
        "_transport_closing",
        "_writer",
        "_writer_bytes",
        "_writer_frames",
        "_writer_history",
        "_writer_readings",
        "buffered_bytes",
        "closed",
        "deadline",
        "deadline_reason",
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
        "pacer",
        "patterns",
        "pending_bytes",
        "progress",
        "replaying",
        "sent_events",
        "unsent_history",
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
        budget: PendingBudget,
        metrics: StreamMetrics,
    ) -> None:
        """``metrics``: the process's, where what the connection writes is counted (its plain-integer tallies)."""
        self.patterns = patterns
        self.last_seq = last_seq
        self.replaying = replaying
        self.limits = limits
        self.frames: list[bytes] = []
        self.buffered_bytes = 0
        self.unsent_readings = 0
        self.unsent_history = 0  # replayed readings among them, queued before any live one (``finish_replay``)
        self.events_left = limits.max_events or -1
        self.dirty = False
        self.drained = LeanEvent()  # waited on by a replay only: an asyncio.Event holds ~860 bytes more per stream
        self.closed = False
        self.ending = False  # no more readings are taken: an ``end`` is queued, or the stream is closed
        self.end_reason: str | None = None
        self.on_abort: Callable[[], object] = lambda: None
        self.on_written: Callable[[int], None] = lambda readings: None
        self.pacer = Pacer(limits.rate_per_s, on_due=self._release, conflated=metrics.conflated)
        self._bytes_tally = metrics.bytes_sent  # body bytes written
        self._replayed_tally = metrics.replayed  # history readings written
        self._latency = metrics.end_to_end  # live readings' end-to-end latency, observed per write
        self.last_write = time.monotonic()
        self.progress = Progress(self.last_write)
        self.pending_bytes = 0
        self.deadline = math.inf  # when the stream ends (monotonic), with ``deadline_reason``: see end_at
        self.deadline_reason = ""
        self._budget = budget
        self._conflating = False  # readings conflate until the write under way completes (conflate_queue)
        self._mark_dirty = mark_dirty
        self._held: list[tuple[int, str, bytes]] = []
        self._held_bytes = 0
        self._send: Send | None = None
        self._writer: asyncio.Task[None] | None = None
        self._writer_bytes = 0
        self._writer_readings = 0
        self._writer_history = 0
        self._writer_frames: Sequence[bytes] = ()  # the oldest live reading of the write under way, if it has one
        self._sent_bytes = 0  # handed to the transport (or to the server's send) so far
        self.sent_events = 0  # readings among them: with ``sent_bytes``, what the stream's closing log line tells
        self._transport: asyncio.Transport | None = None
        self._transport_bytes = 0  # in the transport's write buffer when last looked
        self._transport_chunk = 0  # the largest write since the transport was last seen empty
        self._direct: asyncio.Transport | None = None  # where pre-framed chunks are written straight (fastwrite)
        self._single_chunk: bytes | None = None
        self._transport_closing: Callable[[], bool] | None = None

    def open(self, send: Send) -> None:
        """The response has started: frames can be written with ``send`` from now on, and what waits is written now.

        In the same loop turn as the head: a half-closed client's EOF, read later, ends a stream under way only
        after its ``retry`` went out (core/httpprotocol.py)."""
        self._send = send
        self._direct = chunked_transport(send)
        self._transport_closing = transport_closing(send)
        self._transport = stream_transport(send)
        if self._transport is not None and self.limits.send_buffer_bytes:
            cap_send_buffer(self._transport, self.limits.send_buffer_bytes)
        if self.frames:  # the retry frame at least: written with the head, before the loop reads a client's EOF
            written = self.flush(time.monotonic())
            if written:
                self.on_written(written)

    def deliver(
        self, seq: int, topic: str, frame: bytes, now: float, framed: bytes | None = None, alone: bool = False
    ) -> bool:
        """A live reading from the hub: held during a replay, rate limited and conflated otherwise.

        ``alone``: nothing more comes to the connections in this loop turn, so a reading with nothing queued or
        being written before it is written now, as ``framed``: the end of the turn would write it alone all the
        same, after a round of queueing and marking dirty that costs about as much as the write. Returns whether it
        was written now; the hub counts those (bytes, events, latency) together for the event.
        """
        if self.replaying:
            self._held.append((seq, topic, frame))
            self._held_bytes += len(frame)
            self._account()
            return False
        if seq <= self.last_seq or self.ending:
            return False
        self.last_seq = seq
        pacer = self.pacer
        # ``_behind`` is only called while a write waits (it checks that too): a call saved per delivery. What is
        # read per delivery is kept to this object, the pacer and the transport (integers, not the pacer's dict or
        # the frames' list: with 5,000 streams each object more is a cache miss per delivery).
        if pacer.bytes or (self._writer is not None and self._behind()) or not pacer.take(now):
            self._conflate(topic, seq, frame)
            return False
        direct = self._direct
        if alone and framed is not None and direct is not None and not self.buffered_bytes and self._writer is None:
            # Not replaying: no replay waits for ``drained`` (see _written).
            try:  # as in flush: a transport that raises ends this stream alone
                if not direct.is_closing() and not direct.get_write_buffer_size():  # fastwrite.takes_now, inlined
                    direct.write(framed)
                    self.sent_events += 1
                    self._moved(len(framed), now)
                    if self.pending_bytes:
                        self._account()
                    if self.events_left > 0:
                        self._spend_event()
                    return True
            except Exception as err:
                log.debug("write_failed", error=repr(err))
                self.abort("write_failed")
                return False
        self._queue_reading(frame, framed)
        return False

    def push_reading(self, seq: int, frame: bytes) -> None:
        """A replayed reading: not rate limited (the replay waits for the client instead), never doubled."""
        if seq > self.last_seq and not self.ending:
            self.last_seq = seq
            self.unsent_history += 1
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
        self.pacer.clear()  # conflated readings of the old stream: never sent after the reset
        self._account()
        self.push(control_frame("reset", {"reason": "stream_recreated", "first_available_id": first_seq}))
        return True

    def finish_replay(self) -> None:
        """Release the live frames held during the replay; those the replay already sent are dropped."""
        self.replaying = False
        held, self._held = self._held, []
        self._held_bytes = 0
        now = time.monotonic()
        for seq, topic, frame in held:
            self.deliver(seq, topic, frame, now)
        self._account()

    def flush(self, now: float) -> int:
        """Write everything pending as one chunk, now, unless a write is still under way.

        Returns how many readings were written at once (those of a write that has to wait are
        counted by ``on_written`` when it completes). Never raises: a write that fails, or finds the
        transport closed, ends this stream (``abort``) and leaves the caller's other connections be.
        """
        self.dirty = False
        if self.closed or self._send is None:
            return 0
        frames = self.frames
        if self._writer is not None or not frames:
            self._account()  # what piled up behind the write that waits for the socket, or was conflated
            return 0
        readings, history = self.unsent_readings, self.unsent_history
        try:  # costs nothing until it catches (Python 3.11+), so it guards each write, not each event
            direct = self._direct
            if direct is not None and not self.ending and takes_now(direct):
                single = self._single_chunk
                data = single if single is not None and len(frames) == 1 else chunk(b"".join(frames))
                direct.write(data)
                self._clear_queue()
                self._written(len(data), readings, history, now, frames, history)
                return readings
            if self.client_gone():  # whatever uvicorn told the handler (see fastwrite.transport_closing)
                self.abort("transport_closed")
                return 0
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            self._clear_queue()
            message = {"type": "http.response.body", "body": data, "more_body": not self.ending}
            writer = run_eagerly(self._send(message))  # type: ignore[arg-type]
            if writer is None:
                self._written(len(data), readings, history, now, frames, history)
                return readings
            self._writer = writer
            self._writer_bytes = len(data)
            self._writer_readings = readings
            self._writer_history = history
            self._writer_frames = first_live(frames, history)  # not all of them: they are in the write's bytes
            writer.add_done_callback(self._on_writer_done)
            self._account()
            return 0
        except Exception as err:  # a transport that raises (uvloop's, once closed): this client only
            log.debug("write_failed", error=repr(err))
            self.abort("write_failed")
            return 0

    @property
    def sent_bytes(self) -> int:
        """Body bytes written so far (with the HTTP chunk framing where the stream writes to the transport itself)."""
        return self._sent_bytes

    @property
    def moved_at(self) -> float:
        """When bytes last moved towards the client, or none waited (monotonic): what the budget ranks streams by.

        A write that leaves the transport empty moved its bytes at ``last_write``, and is not told to the stall
        tracker (``progress``): that would be one object more touched per delivery. Once bytes wait in the
        transport, the tracker's samples say when they last moved.
        """
        if self._transport_bytes:
            return self.progress.moved_at
        return max(self.progress.moved_at, self.last_write)

    def _clear_queue(self) -> None:
        """Nothing waits to be written any more (it was handed over, or dropped)."""
        self.frames = []
        self.buffered_bytes = 0
        self.unsent_readings = 0
        self.unsent_history = 0

    def _written(self, size: int, readings: int, history: int, now: float, frames: Sequence[bytes], skip: int) -> None:
        """``size`` bytes went to the transport, with ``readings`` readings, the first ``history`` of them replayed.

        Counts them, observes the live ones' latency (the oldest of them: the first reading of ``frames`` after
        ``skip`` others), and looks at what the transport still holds, whether bytes move, what waited for room.
        """
        live = readings - history
        if live:
            latency = self._latency
            if frames[0] is latency.first and now == latency.now:  # ``observe``'s common case, without its call
                latency.readings += live
            else:
                latency.observe(frames, skip, live, now)
        if history:
            self._replayed_tally.count += history
        self._bytes_tally.count += size
        self.sent_events += readings
        self._moved(size, now)
        if not self.drained.is_set():
            self.drained.set()
        if self.pacer.waiting:
            if not self.pacer.scheduled:
                self._release()
            self._account()
        elif self.pending_bytes:
            self._account()

    def _moved(self, size: int, now: float) -> None:
        """``size`` bytes went to the transport: what it still holds, and whether bytes move."""
        self._sent_bytes += size
        self.last_write = now
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size():  # the kernel did not take all of it
            self._look_at_transport(size)
            self.progress.sample(self._sent_bytes - self._transport_bytes, True, now)
        else:  # all of it reached the kernel (or a server we cannot look into took it): the common case
            self._transport_bytes = self._transport_chunk = 0  # and the bytes moved at ``last_write`` (moved_at)

    def _on_writer_done(self, task: asyncio.Task[None]) -> None:
        self._writer = None
        self._conflating = False
        size, self._writer_bytes = self._writer_bytes, 0
        if task.cancelled() or task.exception() is not None:
            self.abort("write_failed")  # nothing more if close() cancelled it
            return
        frames, self._writer_frames = self._writer_frames, ()
        self.on_written(self._writer_readings)
        self._written(size, self._writer_readings, self._writer_history, time.monotonic(), frames, 0)
        if self.frames:
            self.flush(time.monotonic())

    async def wait_drained(self) -> None:
        """Back-pressure for a replay: wait while the client is far behind."""
        while self.buffered_bytes > REPLAY_HIGH_WATER_BYTES and not self.closed:
            self.drained.clear()
            await self.drained.wait()

    def end_at(self, deadline: float, reason: str) -> None:
        """End the stream at ``deadline`` (monotonic) with ``reason``, unless it is to end earlier already (the ticker
        ends it: its lifetime, or its token's expiry, whichever comes first)."""
        if deadline < self.deadline:
            self.deadline = deadline
            self.deadline_reason = reason

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

    def stalled_for(self, now: float) -> float:
        """Seconds bytes have waited to be written with none reaching the client's socket (0 while they move).

        Looks at the transport's buffer, which the kernel drains between writes, and counts it in the budget.
        """
        self._look_at_transport(0)
        self._account()
        waiting = self.buffered_bytes + self._writer_bytes + self._transport_bytes > 0
        return self.progress.sample(self._sent_bytes - self._transport_bytes, waiting, now)

    def cut(self, reason: str) -> None:
        """End a stream whose client does not keep up: with ``end`` if its socket takes it now, else a reset.

        An ``end`` the socket cannot take would wait behind what the client does not read, and keep the
        connection and its buffers for as long as the client stays: ``abort`` frees them at once.
        """
        if self.closed:
            return
        if not self.ending and self._writer is None and not self._transport_holds_bytes():
            self.pacer.clear()
            self.end(reason)
            self.flush(time.monotonic())  # with the end: the response completes, and the handler returns
            if self.closed or (self._writer is None and not self._transport_holds_bytes()):
                return
        self.abort(reason)

    def abort(self, reason: str) -> None:
        """End the stream now without a word (its client is gone, or cut off), and wake its handler (``on_abort``).

        The transport is aborted, not closed: closing would keep what it and the kernel hold until the
        client read it.
        """
        if self.closed:
            return
        self.end_reason = reason
        self.close()
        if self._transport is not None:
            self._transport.abort()
        self.on_abort()

    def close(self) -> None:
        """Write nothing more (the stream ended, its client is gone, or it was cut off); drop what waits."""
        self.closed = True
        self.ending = True
        self.drained.set()
        self.pacer.clear()
        self._clear_queue()
        self._writer_frames = ()
        self._held = []
        self._held_bytes = 0
        self._transport_bytes = 0
        self._transport_chunk = 0
        self._writer_bytes = 0
        if self._writer is not None:
            self._writer.cancel()
        self._budget.add(-self.pending_bytes)
        self.pending_bytes = 0

    def conflate_queue(self) -> None:
        """The budget's first step for a connection whose write waits for a full socket: its queued readings are
        dropped (counted as conflated), and until that write completes only the latest reading per topic waits.

        Control frames (``retry``, ``reset``, a keep-alive) stay queued; a write under way and the transport's
        buffer stay as they are.
        """
        if self.ending or self.replaying or self._writer is None or not self.unsent_readings:
            return
        self.frames = [frame for frame in self.frames if not frame.startswith(READING_PREFIX)]
        self.buffered_bytes = sum(map(len, self.frames))
        self.pacer.count_dropped(self.unsent_readings)
        if self.events_left > 0:
            self.events_left += self.unsent_readings  # never sent
        self.unsent_readings = 0
        self.unsent_history = 0
        self._single_chunk = None
        self._conflating = True
        self._account()

    def _account(self) -> None:
        """This connection's share of the budget brought up to date (O(1): a change, not a sum over connections)."""
        if self.closed:
            return
        pending = (
            self.buffered_bytes
            + self._writer_bytes
            + self._transport_bytes
            + self._transport_chunk
            + self.pacer.bytes
            + self._held_bytes
        )
        if pending != self.pending_bytes:
            delta = pending - self.pending_bytes
            self.pending_bytes = pending
            self._budget.add(delta)

    def _look_at_transport(self, written: int) -> None:
        """What the transport holds after a write of ``written`` bytes (0: none): the bytes it has not sent yet, and
        the largest write since it was last empty, which uvloop keeps whole until every byte of it is sent."""
        transport = self._transport
        self._transport_bytes = transport.get_write_buffer_size() if transport is not None else 0
        if not self._transport_bytes:
            self._transport_chunk = 0
        elif written > self._transport_chunk:
            self._transport_chunk = written

    def _transport_holds_bytes(self) -> bool:
        return self._transport is not None and self._transport.get_write_buffer_size() > 0

    def _queue_reading(self, frame: bytes, framed: bytes | None = None) -> None:
        self.unsent_readings += 1
        self.push(frame, framed)
        if self.events_left > 0:
            self._spend_event()

    def _spend_event(self) -> None:
        """One of the ``max_events`` was queued or written: ``end`` after the last of them."""
        self.events_left -= 1
        if self.events_left == 0:
            self.end("max_events")

    def _behind(self) -> bool:
        """More than ``max_buffer_bytes`` wait behind a write the socket did not take (or the budget conflated its
        queue): the client is slow.

        Frames queued in this loop turn are not behind: they are all written at its end.
        """
        return self._writer is not None and (self._conflating or self.buffered_bytes > self.limits.max_buffer_bytes)

    def _conflate(self, topic: str, seq: int, frame: bytes) -> None:
        pacer = self.pacer
        pacer.hold(topic, seq, frame)
        if pacer.bytes > self.limits.max_buffer_bytes:
            self.cut("slow_consumer")  # the latest readings of its topics alone are more than it may have waiting
            return
        if self._writer is None:
            pacer.schedule()  # else released once the write under way completes (_written)
        if not self.dirty:  # counted in the budget at the end of the turn (flush), not per reading
            self.dirty = True
            self._mark_dirty(self)

    def _release(self) -> None:
        """Queue waiting readings, oldest first, as far as the rate and ``max_buffer_bytes`` allow.

        The rest goes out after the write of these (``_written``), or at the next token (``Pacer.schedule``).
        """
        if self.closed or self.ending or self._writer is not None:
            return
        released = self.pacer.release(time.monotonic(), self.limits.max_buffer_bytes - self.buffered_bytes)
        for frame in released:
            self._queue_reading(frame)
            if self.ending:  # max_events
                return
        if self.pacer.waiting and not released:
            self.pacer.schedule()
