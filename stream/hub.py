"""The hub: one upstream JetStream consumer per process, routed to every matching connection.

The consumer carries what the process's connections follow (stream/interest.py), none while none is open.
Each reading is encoded to its SSE frame once, and the same bytes go to every subscriber. The hub
knows the last stream sequence it dispatched (``last_seq``): every reading up to it has been handed
to the connections registered at the time, every later one will be, which is what a resuming
connection's replay needs to meet the live feed exactly.

A connection following something the consumer does not carry waits: the hub makes the consumer again with
filters that carry it, from ``last_seq`` on (nothing delivered meanwhile, so no reading is missed or sent
twice), and the connection's replay, if it has one, goes up to that point.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime

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
from stream.interest import Interest
from stream.limits import jittered
from stream.metrics import StreamMetrics
from stream.upstream import OrderedFeed, open_wire

log = structlog.get_logger(__name__)

START_RETRY_S = 0.5
# Interest gone is dropped from the consumer's filters this long after (a dashboard reloading comes straight back).
SHRINK_AFTER_S = 10.0
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
        self.interest = Interest(link.settings.live_feed_max_filters)
        self.connections: set[Connection] = set()
        self.last_seq = 0
        self.ready = asyncio.Event()
        self.replay_slots = asyncio.Semaphore(link.settings.max_concurrent_replays)
        self.events_sent = 0
        self.upstream_pending = 0  # the live consumer's pending count at its last delivery: a plain store per event
        metrics.upstream_pending.set_function(lambda: self.upstream_pending)
        metrics.live_feed_connected.set_function(self._live_feed_connected)
        metrics.live_feed_filters.set_function(lambda: len(self.interest.filters) if self._feed is not None else 0)
        self._dirty: list[Connection] = []
        self._since_yield = 0
        self._feed: OrderedFeed | None = None
        self._joining: dict[Connection, asyncio.Future[int]] = {}  # connections waiting for the filters to carry them
        self._wake = asyncio.Event()  # a connection waits for the filters, or interest went
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
        for joined in self._joining.values():
            joined.cancel()
        if self._feed is not None:
            await self._feed.close()
        if self._advisories is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._advisories.unsubscribe()
        for connection in list(self.connections):
            connection.close()

    def add(self, connection: Connection) -> int | asyncio.Future[int]:
        """Register a connection: the stream sequence after which readings reach it through the live feed, or a future
        of it when the feed's filters must change first (readings come only once it is resolved)."""
        self.connections.add(connection)
        if self.interest.add(connection.patterns) and self._feed is not None:
            self._route(connection)
            return self.last_seq
        joined = asyncio.get_running_loop().create_future()
        self._joining[connection] = joined
        self._wake.set()
        return joined

    def _route(self, connection: Connection) -> None:
        for pattern in connection.patterns:
            self.index.add(pattern, connection)

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
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        self.interest.remove(connection.patterns)
        if self.interest.shrinkable:
            self._wake.set()
        joined = self._joining.pop(connection, None)
        if joined is not None:
            joined.cancel()
            return
        for pattern in connection.patterns:
            self.index.remove(pattern, connection)

    async def _run(self) -> None:
        """Find where the stream is, then keep the live consumer's filters on what the connections follow."""
        settings = self.link.settings
        while True:
            await self.link.stream_confirmed.wait()
            assert self.link.js is not None
            try:
                info = await self.link.js.stream_info(settings.stream_name)
                await self._watch_stream_creation()
                await self._check_wire()
            except (TimeoutError, nats.errors.Error) as err:
                self._start_error = str(err) or repr(err)
                log.warning("live_feed_start_failed", error=self._start_error)
                await asyncio.sleep(START_RETRY_S)
                continue
            break
        self.last_seq = info.state.last_seq
        log.info("live_feed_ready", stream=settings.stream_name, after_seq=self.last_seq)
        self.ready.set()
        await self._follow_interest()

    async def _check_wire(self) -> None:
        """Open and close a connection of the live feed's kind once: what stops it (TLS, credentials) shows in
        /readyz as the service starts, not later, as a stream waits for a consumer that cannot be made."""
        assert self.link.nc is not None and self.link.security is not None
        settings = self.link.settings
        probe = await open_wire(
            self.link.nc, self.link.nc.new_inbox(), "live", settings.nats_connect_timeout_s, self.link.security
        )
        probe.close()

    async def _follow_interest(self) -> None:
        """Change the consumer's filters at once for connections it does not carry, and ``SHRINK_AFTER_S`` after
        interest went (one change at a time: connections that come meanwhile are carried by the next one)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._joining:  # interest went: it may come back soon, unless a connection waits meanwhile
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SHRINK_AFTER_S):
                        while not self._joining:
                            await self._wake.wait()
                            self._wake.clear()
            try:
                await self._refilter()
            except (TimeoutError, nats.errors.Error) as err:
                log.warning("live_feed_filters_not_changed", error=str(err) or repr(err))
                await asyncio.sleep(START_RETRY_S)
                self._wake.set()

    async def _refilter(self) -> None:
        """Make the live consumer again with the filters the connections call for now; close it when none is left."""
        assert self.link.js is not None
        if not self.interest.counts:
            await self._close_feed()
            return
        info = await self.link.js.stream_info(self.link.settings.stream_name)
        if self._feed is not None:
            await self._feed.settled()
        # Nothing suspends from here on: the filters, the sequence they start after and the connections they carry
        # are one decision.
        filters = self.interest.wanted()
        subjects = [self.subjects.for_pattern(pattern) for pattern in filters]
        changed = self._feed is None or filters != self.interest.filters
        if self._feed is None:
            self.last_seq = info.state.last_seq
            self._feed = self._new_feed(subjects, info.created)
            self._feed.follow()
        elif changed:
            self._feed.change_filters(subjects)
        self.interest.use(filters)
        joining, self._joining = self._joining, {}
        for connection, joined in joining.items():
            if not connection.replaying:  # a live stream starts now: nothing stored before it opened
                connection.last_seq = max(connection.last_seq, info.state.last_seq)
            self._route(connection)
            joined.set_result(self.last_seq)
        if changed:
            self.metrics.live_feed_filter_changes.inc()
            log.info("live_feed_filters_changed", filters=len(filters), joined=len(joining), after_seq=self.last_seq)

    async def _close_feed(self) -> None:
        """No connection is left: nothing is consumed until one comes (it starts a new consumer at the stream's end)."""
        if self._feed is None:
            return
        feed, self._feed = self._feed, None
        self.interest.use([])
        self.metrics.live_feed_filter_changes.inc()
        log.info("live_feed_closed", after_seq=self.last_seq)
        await feed.close()

    def _new_feed(self, filters: list[str], stream_created: datetime | None) -> OrderedFeed:
        link, settings = self.link, self.link.settings
        assert link.nc is not None and link.js is not None and link.security is not None
        return OrderedFeed(
            link.nc,
            link.js,
            stream=settings.stream_name,
            filters=filters,
            start_seq=self.last_seq + 1,
            handler=self._on_live,
            connect_timeout_s=settings.nats_connect_timeout_s,
            security=link.security,
            name="live",
            on_recreated=self._on_stream_recreated,
            stream_created=stream_created,
            on_reset=self.metrics.live_feed_resets.inc,
        )

    def _live_feed_connected(self) -> int:
        """The feed delivers, or none is needed and NATS is there to make one."""
        return int(self.link.connected if self._feed is None else self._feed.connected)

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

    async def _on_live(self, seq: int, subject: str, payload: bytes, pending: int, ends_batch: bool) -> None:
        """Route one live reading; never suspends, so one slow client cannot hold the others back.

        The last of its batch (``ends_batch``) is alone in its loop turn: connections write it at once where nothing
        waits before it (``Connection.deliver``), and their writes are counted here, once for them all."""
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
        written = 0
        for connection in subscribers:
            written += connection.deliver(seq, topic, frame, now, framed, ends_batch)
        if written:
            metrics = self.metrics
            self.events_sent += written
            metrics.bytes_sent.count += written * len(framed)
            metrics.end_to_end.observe((frame,), 0, written, now)
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
