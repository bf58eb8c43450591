"""An ordered push consumer that we run end to end, for the live feed and for each replay.

nats-py has an ordered consumer, but before its first message a reset restarts it at sequence 1
(replaying everything), and it does not tell its owner how far it got. This one knows the next stream
sequence it wants, answers flow control itself, and after a consumer-sequence gap, missed heartbeats,
a lost connection or a reconnect it recreates the consumer from exactly that sequence: its handler
sees every matching message once, in stream order. Deliveries arrive on a ``WireSubscriber`` of its
own (stream/wire.py); nats-py creates and deletes the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ReplayPolicy

from core.natsconn import NatsSecurity
from stream.wire import Delivery, WireError, WireSubscriber

log = structlog.get_logger(__name__)

# handler(stream sequence, subject, payload, messages still pending after this one, whether it ends its batch: nothing
# more is handed over before the loop turns, unless the handler itself suspends)
MessageHandler = Callable[[int, str, bytes, int, bool], Awaitable[None]]

CONTROL_STATUS = b"NATS/1.0 100"
LAST_CONSUMER = b"Nats-Last-Consumer"
CONSUMER_STALLED = b"Nats-Consumer-Stalled"
V1_ACK_TOKENS = 9
RETRY_WAIT_S = 0.5
ORPHAN_CONSUMER_TIMEOUT_S = 30.0


def ack_sequences(reply: bytes) -> tuple[int, int, int] | None:
    """(stream sequence, consumer sequence, pending) from a JetStream ack subject, or None if it is not one.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>`` (v1) or the v2 form with a
    domain and account hash in front and a token behind.
    """
    tokens = reply.split(b".")
    if len(tokens) < V1_ACK_TOKENS or tokens[0] != b"$JS" or tokens[1] != b"ACK":
        return None
    base = 5 if len(tokens) == V1_ACK_TOKENS else 7
    try:
        return int(tokens[base]), int(tokens[base + 1]), int(tokens[base + 3])
    except (ValueError, IndexError):
        return None


def header_fields(block: bytes) -> dict[bytes, bytes]:
    """The ``Name: value`` lines of a raw NATS header block (the status line is skipped)."""
    fields = {}
    for line in block.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


async def open_wire(
    nc: NATS, inbox: str, name: str, connect_timeout_s: float, security: NatsSecurity
) -> WireSubscriber:
    """A subscription to ``inbox`` on a connection of its own to the server ``nc`` is connected to, named after it."""
    url = nc.connected_url
    if url is None or not nc.is_connected:
        raise WireError("not connected to NATS")
    async with asyncio.timeout(connect_timeout_s):
        return await WireSubscriber.open(url, inbox, name=f"{nc.options['name']}-{name}", security=security)


class OrderedFeed:
    """Delivers a stream's messages from ``start_seq`` on, in order, exactly once, across resets."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        *,
        stream: str,
        filters: list[str],
        start_seq: int,
        handler: MessageHandler,
        connect_timeout_s: float,
        security: NatsSecurity,
        heartbeat_s: float = 5.0,
        name: str = "feed",
        on_recreated: Callable[[int], None] | None = None,
        stream_created: datetime | None = None,
        latest_first: bool = False,
        on_reset: Callable[[], None] | None = None,
    ) -> None:
        """``connect_timeout_s`` bounds opening the feed's own connection (``settings.nats_connect_timeout_s``),
        made with the TLS and credentials of ``security`` (the link's).

        ``on_recreated`` (the live feed's): each new consumer first checks that the stream is the one
        created at ``stream_created``; if it was deleted and created again, the feed starts over at the
        new stream's first message and calls ``on_recreated`` with that sequence.

        ``latest_first`` (a snapshot's): the first consumer delivers the last message of each matching subject, in
        stream order, then every later one (JetStream's ``last_per_subject``); a consumer recreated after a reset
        delivers every message from ``next_seq`` on, which may be more than the snapshot would have sent, never
        fewer.

        ``on_reset`` is told each time the consumer is to be made again (the live feed's metrics count them)."""
        self._nc = nc
        self._js = js
        self._stream = stream
        self._filters = filters
        self._handler = handler
        self._connect_timeout_s = connect_timeout_s
        self._security = security
        self._heartbeat_s = heartbeat_s
        self._name = name
        self.next_seq = max(1, start_seq)
        self._consumer: str | None = None
        self._sub: WireSubscriber | None = None
        self._reader: asyncio.Task[None] | None = None
        self._consumer_seq = 0
        self._last_activity = 0.0
        self._resetting: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._closed = False
        self._starting = False
        self._reset_after_start: str | None = None  # a reset asked for while ``start`` was creating the consumer
        self._on_recreated = on_recreated
        self._stream_created = stream_created
        self._latest_first = latest_first
        self._on_reset = on_reset

    async def start(self) -> int:
        """Create the consumer; returns how many matching messages it has to deliver right now.

        A reset asked for meanwhile (a stream-created advisory, a lost subscription) waits until this one is
        created: two creations at once would each open a connection, and one of them would never be closed."""
        self._starting = True
        try:
            pending = await self._create()
        except BaseException:
            self._reset_after_start = None
            await self._drop_consumer()
            raise
        finally:
            self._starting = False
        self._monitor = asyncio.create_task(self._watch_heartbeats(), name=f"{self._name}-heartbeats")
        if self._reset_after_start is not None:
            self._reset(self._reset_after_start)
        return pending

    async def close(self) -> None:
        """Stop delivering and delete the consumer (best effort: the server drops it when inactive anyway)."""
        self._closed = True
        for task in (self._monitor, self._resetting):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._drop_consumer()

    def _config(self, inbox: str) -> ConsumerConfig:
        latest = self._latest_first
        config = ConsumerConfig(
            deliver_subject=inbox,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT if latest else DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=None if latest else self.next_seq,
            ack_policy=AckPolicy.NONE,
            replay_policy=ReplayPolicy.INSTANT,
            flow_control=True,
            idle_heartbeat=self._heartbeat_s,
            inactive_threshold=ORPHAN_CONSUMER_TIMEOUT_S,
            mem_storage=True,
            num_replicas=1,
            max_deliver=1,
        )
        if len(self._filters) == 1:
            config.filter_subject = self._filters[0]
        else:
            config.filter_subjects = list(self._filters)
        return config

    async def _create(self) -> int:
        """Subscribe on a connection of our own, then create the consumer that delivers to it."""
        self._consumer_seq = 0
        if self._on_recreated is not None:
            await self._check_incarnation(self._on_recreated)
        inbox = self._nc.new_inbox()
        sub = await open_wire(self._nc, inbox, self._name, self._connect_timeout_s, self._security)
        self._sub = sub
        self._reader = asyncio.create_task(self._read(sub), name=f"{self._name}-reader")
        info = await self._js.add_consumer(self._stream, self._config(inbox))
        self._latest_first = False  # once: a consumer made again goes on from next_seq
        self._consumer = info.name
        self._last_activity = time.monotonic()
        return info.num_pending or 0

    async def _check_incarnation(self, on_recreated: Callable[[int], None]) -> None:
        """A stream deleted and created again numbers its messages from 1 anew: follow the new one from its start."""
        info = await self._js.stream_info(self._stream)
        if self._stream_created is None:
            self._stream_created = info.created
        elif info.created != self._stream_created:
            self._stream_created = info.created
            self.next_seq = max(1, info.state.first_seq)
            log.warning("stream_recreated", feed=self._name, stream=self._stream, next_seq=self.next_seq)
            on_recreated(self.next_seq)

    def _detach(self) -> tuple[asyncio.Task[None] | None, str | None]:
        """Stop reading the current subscription at once; returns its reader and consumer to clean up."""
        sub, reader, consumer = self._sub, self._reader, self._consumer
        self._sub, self._reader, self._consumer = None, None, None
        if sub is not None:
            sub.close()
        return reader, consumer

    async def _drop_consumer(self) -> None:
        await self._clean_up(*self._detach())

    async def _clean_up(self, reader: asyncio.Task[None] | None, consumer: str | None) -> None:
        """Wait for a detached reader to stop, and delete its consumer."""
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if consumer is not None and self._nc.is_connected:
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await self._js.delete_consumer(self._stream, consumer)

    @property
    def connected(self) -> bool:
        """Whether deliveries can arrive: a consumer and its subscription are there (not between a reset and the
        new consumer)."""
        return self._sub is not None and self._consumer is not None

    def restart(self, reason: str) -> None:
        """Recreate the consumer from ``next_seq`` now (after a reconnect the server may have lost it)."""
        self._reset(reason)

    def follow(self) -> None:
        """Create the consumer in the background, retrying until it is made (the live feed's start: a feed that
        gives up would leave its streams without readings; ``start`` is for replays, which fail instead)."""
        self._monitor = asyncio.create_task(self._watch_heartbeats(), name=f"{self._name}-heartbeats")
        self._recreate_now()

    def change_filters(self, filters: list[str]) -> None:
        """Deliver what ``filters`` match from ``next_seq`` on: nothing more comes from the current consumer from now
        on, and one with these filters is made in the background.

        Made again rather than updated in place: a new consumer starts exactly at ``next_seq``, where an update
        would take effect wherever the server's consumer happened to be, and messages already on their way would
        not say which filters they were sent for. Call it once ``settled``: a reset under way could make its
        consumer with the old filters."""
        assert not self._starting and (self._resetting is None or self._resetting.done())
        self._filters = filters
        self._recreate_now()

    async def settled(self) -> None:
        """Wait until no consumer is being made (returns at once when none is; never cancels the making)."""
        if self._resetting is not None and not self._resetting.done():
            await asyncio.wait([self._resetting])

    def _reset(self, reason: str) -> None:
        """Recreate the consumer from ``next_seq``, once at a time, retrying until it works."""
        if self._closed or (self._resetting is not None and not self._resetting.done()):
            return
        if self._starting:
            self._reset_after_start = reason
            return
        log.info("feed_reset", feed=self._name, reason=reason, next_seq=self.next_seq)
        if self._on_reset is not None:
            self._on_reset()
        self._recreate_now()

    def _recreate_now(self) -> None:
        reader, consumer = self._detach()  # nothing more from the old subscription, from now on
        self._resetting = asyncio.create_task(self._recreate(reader, consumer), name=f"{self._name}-reset")

    async def _recreate(self, reader: asyncio.Task[None] | None, consumer: str | None) -> None:
        await self._clean_up(reader, consumer)
        while not self._closed:
            try:
                await self._create()
                return
            except (TimeoutError, nats.errors.Error) as err:
                log.warning("feed_recreate_failed", feed=self._name, error=str(err) or repr(err))
                await self._drop_consumer()
                await asyncio.sleep(RETRY_WAIT_S)

    async def _watch_heartbeats(self) -> None:
        """Two missed heartbeats mean the consumer is gone (server restart, leader change): recreate it."""
        while not self._closed:
            await asyncio.sleep(self._heartbeat_s)
            if time.monotonic() - self._last_activity > 2 * self._heartbeat_s and self._nc.is_connected:
                self._last_activity = time.monotonic()
                self._reset("missed heartbeats")

    async def _read(self, sub: WireSubscriber) -> None:
        """Hand the subscription's deliveries to the handler until it is replaced or lost."""
        try:
            while True:
                batch = await sub.next_batch()
                self._last_activity = time.monotonic()
                last = batch[-1]
                for delivery in batch:
                    if sub is not self._sub:
                        return
                    await self._on_delivery(sub, delivery, delivery is last)
        except WireError as err:
            if sub is self._sub:
                self._reset(str(err))

    async def _on_delivery(self, sub: WireSubscriber, delivery: Delivery, ends_batch: bool) -> None:
        subject, reply, headers, payload = delivery
        if headers.startswith(CONTROL_STATUS):
            self._on_control(sub, reply, headers)
            return
        sequences = ack_sequences(reply)
        if sequences is None:
            return
        stream_seq, consumer_seq, pending = sequences
        if consumer_seq != self._consumer_seq + 1:
            self._reset(f"consumer sequence {consumer_seq} after {self._consumer_seq}")
            return
        self._consumer_seq = consumer_seq
        if stream_seq < self.next_seq:
            return
        self.next_seq = stream_seq + 1
        await self._handler(stream_seq, subject.decode(), payload, pending, ends_batch)

    def _on_control(self, sub: WireSubscriber, reply: bytes, headers: bytes) -> None:
        """Flow control wants an empty reply; a heartbeat says how far the consumer got."""
        if reply:
            sub.publish_empty(reply)
            return
        fields = header_fields(headers)
        stalled = fields.get(CONSUMER_STALLED)
        if stalled:
            sub.publish_empty(stalled)
        last = fields.get(LAST_CONSUMER)
        if last is not None and last.isdigit() and int(last) != self._consumer_seq:
            self._reset(f"heartbeat says consumer sequence {last.decode()}, we have {self._consumer_seq}")
