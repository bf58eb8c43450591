"""The hub: one upstream JetStream subscription per process, routed to every matching connection.

Each reading is encoded to its SSE frame once, and the same bytes go to every subscriber. The hub
knows the last stream sequence it dispatched (``last_seq``): every reading up to it has been handed
to the connections registered at the time, every later one will be, which is what a resuming
connection's replay needs to meet the live feed exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from core.jetstream import JetStreamLink
from core.readings import event_frame
from core.topics import Subjects
from stream.connection import Connection
from stream.fastwrite import chunk
from stream.index import PatternIndex
from stream.limits import jittered
from stream.metrics import StreamMetrics
from stream.upstream import OrderedFeed

log = structlog.get_logger(__name__)

START_RETRY_S = 0.5
# Frame bytes handed to connections before the routing lets their writes go out: each connection's write
# of one turn joins what it got in the turn, so this bounds what a backlog makes the writes of a turn hold.
YIELD_EVERY_BYTES = 32 << 20


class Hub:
    """Fans the live feed out to connections; ``ready`` once the feed is running.

    Which streams may open is Admission's to say (stream/admission.py); keep-alives, lifetimes, vanished
    and stuck clients are the Ticker's rounds (stream/ticker.py) over ``connections``, and what they may
    hold all together the PendingBudget's (stream/slowconsumer.py).
    """

    def __init__(self, link: JetStreamLink, metrics: StreamMetrics) -> None:
        self.link = link
        self.metrics = metrics
        self.subjects = Subjects(link.settings.subject_prefix)
        self.index: PatternIndex[Connection] = PatternIndex()
        self.connections: set[Connection] = set()
        self.last_seq = 0
        self.ready = asyncio.Event()
        self.replay_slots = asyncio.Semaphore(link.settings.max_concurrent_replays)
        self.events_sent = 0
        self.upstream_pending = 0  # the live consumer's pending count at its last delivery: a plain store per event
        metrics.upstream_pending.set_function(lambda: self.upstream_pending)
        metrics.live_feed_connected.set_function(lambda: int(self._feed is not None and self._feed.connected))
        self._dirty: list[Connection] = []
        self._since_yield = 0
        self._feed: OrderedFeed | None = None
        self._start_error: str | None = None  # why the live feed did not start last time, for /readyz
        self._advisories: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the live feed in the background, once NATS and the stream are there."""
        self._task = asyncio.create_task(self._run(), name="hub-live-feed")
        self.link.on_reconnected.append(self._on_reconnected)

    async def stop(self) -> None:
        """Stop the feed and close every connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._feed is not None:
            await self._feed.close()
        if self._advisories is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._advisories.unsubscribe()
        for connection in list(self.connections):
            connection.close()

    def add(self, connection: Connection) -> int:
        """Register a connection; returns ``last_seq``: later readings reach it through the live feed."""
        self.connections.add(connection)
        for pattern in connection.patterns:
            self.index.add(pattern, connection)
        return self.last_seq

    def mark_dirty(self, connection: Connection) -> None:
        """A connection has frames to write: write them once this loop turn's events are all routed."""
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self._flush)
        self._dirty.append(connection)

    def count_written(self, readings: int) -> None:
        """Reading events written to a client (a plain count: this runs per connection per write)."""
        self.events_sent += readings

    def _flush(self) -> None:
        """Write every connection marked this turn; ``Connection.flush`` never raises, so none is skipped."""
        dirty, self._dirty = self._dirty, []
        now = time.monotonic()
        written = 0
        for connection in dirty:
            written += connection.flush(now)
        self.events_sent += written

    def remove(self, connection: Connection) -> None:
        """Unregister a connection that has ended."""
        self.connections.discard(connection)
        for pattern in connection.patterns:
            self.index.remove(pattern, connection)

    async def _run(self) -> None:
        settings = self.link.settings
        while True:
            await self.link.stream_confirmed.wait()
            assert self.link.nc is not None and self.link.js is not None and self.link.security is not None
            try:
                info = await self.link.js.stream_info(settings.stream_name)
                self.last_seq = info.state.last_seq
                await self._watch_stream_creation()
                self._feed = OrderedFeed(
                    self.link.nc,
                    self.link.js,
                    stream=settings.stream_name,
                    filters=[self.subjects.all],
                    start_seq=self.last_seq + 1,
                    handler=self._on_live,
                    connect_timeout_s=settings.nats_connect_timeout_s,
                    security=self.link.security,
                    name="live",
                    on_recreated=self._on_stream_recreated,
                    stream_created=info.created,
                    on_reset=self.metrics.live_feed_resets.inc,
                )
                await self._feed.start()
            except (TimeoutError, nats.errors.Error) as err:
                self._start_error = str(err) or repr(err)
                log.warning("live_feed_start_failed", error=self._start_error)
                await asyncio.sleep(START_RETRY_S)
                continue
            log.info("live_feed_started", stream=settings.stream_name, after_seq=self.last_seq)
            self.ready.set()
            return

    async def _watch_stream_creation(self) -> None:
        """JetStream announces a created stream: a deleted and recreated one is followed at once, not only
        when the heartbeats of the old one's consumer are missed."""
        if self._advisories is None:
            assert self.link.nc is not None
            subject = f"$JS.EVENT.ADVISORY.STREAM.CREATED.{self.link.settings.stream_name}"
            self._advisories = await self.link.nc.subscribe(subject, cb=self._on_stream_created)

    async def _on_stream_created(self, msg: Msg) -> None:
        if self._feed is not None:
            self._feed.restart("stream created")

    def _on_stream_recreated(self, first_seq: int) -> None:
        """The stream's sequences start over: every open stream is told (see Connection.stream_recreated)."""
        self.last_seq = first_seq - 1
        retry_ms = self.link.settings.retry_ms
        for connection in list(self.connections):
            if connection.stream_recreated(first_seq, jittered(retry_ms)):
                self.metrics.resets.labels(reason="stream_recreated").inc()

    def _on_reconnected(self) -> None:
        if self._feed is not None:
            self._feed.restart("reconnected to NATS")

    async def _on_live(self, seq: int, subject: str, payload: bytes, pending: int) -> None:
        """Route one live reading; never suspends, so one slow client cannot hold the others back."""
        self.upstream_pending = pending
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        self.metrics.upstream_messages.inc()
        topic = self.subjects.topic_of(subject)
        if topic is None:
            return
        subscribers = self.index.match(topic.split("."))
        if not subscribers:
            return
        frame = event_frame(seq, payload)
        if frame is None:
            log.debug("foreign_message_skipped", seq=seq, subject=subject)
            return
        now = time.monotonic()
        framed = chunk(frame)
        for connection in subscribers:
            connection.deliver(seq, topic, frame, now, framed)
        self._since_yield += len(subscribers) * len(frame)
        if self._since_yield >= YIELD_EVERY_BYTES:
            # nats-py hands a backlog over without yielding: let the writes of what was routed go out.
            self._since_yield = 0
            await asyncio.sleep(0)

    def not_ready_reason(self) -> str | None:
        """Why the live feed cannot serve new streams, or None."""
        reason = self.link.not_ready_reason()
        if reason is None and not self.ready.is_set():
            return "live feed not started yet" + (f": {self._start_error}" if self._start_error else "")
        return reason
