"""``snapshot=latest``: the latest stored reading of every topic a stream's patterns match, before its live events.

JetStream hands a consumer with ``deliver_policy: last_per_subject`` the last message of each matching subject
as it stood when the consumer was created, in stream order, then every message stored after that. The consumer
is created before the stream joins the hub, and read after: its first messages are the snapshot, and the ones
after them fill the gap between the consumer's creation and the moment the live feed took the stream over (the
hub's ``last_seq`` then). Live readings of that moment wait in the connection meanwhile, and those the snapshot
made stale are dropped: a reading older than the latest of its topic is not news to a dashboard that just got
the latest. So every topic's latest reading arrives once, then everything after it, in stream order.

With ``since=``, the snapshot is the state before that time (the latest reading of each topic stored before
it), and the history since then follows. A topic whose latest reading is newer than that has its older one
fetched by JetStream's direct get (``multi_last`` up to a sequence), merged in stream order.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from core.jetstream import JetStreamLink
from core.readings import control_frame, event_frame
from core.topics import Pattern, Subjects, distinct_filters
from stream.connection import REPLAY_HIGH_WATER_BYTES, Connection

FETCH_BATCH = 512
FETCH_TIMEOUT_S = 5.0
CONSUMER_INACTIVE_S = 30.0  # the server deletes a consumer left behind by a process that died mid-snapshot
MULTI_LAST_SUBJECTS = 1024  # nats-server answers a direct get of more subjects with 413 Too Many Results
DIRECT_GET_TIMEOUT_S = 5.0


@dataclass(order=True, slots=True)
class Entry:
    """One reading of the snapshot, ordered by its stream sequence."""

    seq: int
    subject: str = field(compare=False)
    payload: bytes = field(compare=False)


class LatestReadings:
    """The last reading of each subject the patterns match, and what JetStream stored after them."""

    def __init__(
        self,
        link: JetStreamLink,
        patterns: list[Pattern],
        subscription: JetStreamContext.PullSubscription,
        consumer: str,
        count: int,
    ) -> None:
        self._link = link
        self._patterns = patterns
        self._subscription = subscription
        self._consumer = consumer
        self.count = count  # the subjects' last readings when the consumer was created: the snapshot
        self._subjects = Subjects(link.settings.subject_prefix)
        self._server_filtered = distinct_filters(patterns) is not None

    @classmethod
    async def open(cls, link: JetStreamLink, patterns: list[Pattern]) -> LatestReadings:
        """Create the consumer: the snapshot is what the stream holds now. Call before the stream joins the hub."""
        assert link.js is not None
        subjects = Subjects(link.settings.subject_prefix)
        distinct = distinct_filters(patterns)
        filters = [subjects.all] if distinct is None else [subjects.for_pattern(p) for p in distinct]
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE,
            filter_subjects=filters,
            inactive_threshold=CONSUMER_INACTIVE_S,
            mem_storage=True,
        )
        info = await link.js.add_consumer(link.settings.stream_name, config)
        try:
            subscription = await link.js.pull_subscribe_bind(consumer=info.name, stream=link.settings.stream_name)
        except BaseException:
            await _delete(link.js, link.settings.stream_name, info.name)
            raise
        return cls(link, patterns, subscription, info.name, info.num_pending or 0)

    async def close(self) -> None:
        """Delete the consumer (best effort: the server drops it once inactive anyway)."""
        assert self._link.js is not None
        with contextlib.suppress(nats.errors.Error):
            await self._subscription.unsubscribe()
        await _delete(self._link.js, self._link.settings.stream_name, self._consumer)

    async def send(self, connection: Connection, live_from: int, limit: int, before: int | None = None) -> int:
        """Push the snapshot, then what was stored after it up to ``live_from``; returns how many readings.

        ``before``: the snapshot as it was before that sequence (``since=``), and nothing after it (the history
        that follows is the caller's). At most ``limit`` topics, the most recently updated: beyond that a
        ``reset`` (reason ``snapshot_limit``) says how many there were.
        """
        if self.count > limit:
            connection.push(control_frame("reset", {"reason": "snapshot_limit", "topics": self.count, "limit": limit}))
        if before is None:
            return await self._send_now(connection, live_from, skip=max(0, self.count - limit))
        entries = await self._before(before, self._link.settings.max_buffer_bytes)
        return await self._push(connection, heapq.nlargest(limit, entries)[::-1])

    async def _send_now(self, connection: Connection, live_from: int, skip: int) -> int:
        pushed = received = 0
        async with contextlib.aclosing(self._messages()) as messages:
            async for msg in messages:
                seq = msg.metadata.sequence.stream
                received += 1
                in_snapshot = received <= self.count
                if in_snapshot and received <= skip:
                    continue
                if not in_snapshot and seq > live_from:
                    break
                pushed += await self._push(connection, [Entry(seq, msg.subject, msg.data)])
                if not in_snapshot and seq == live_from:
                    break
        return pushed

    async def _before(self, before: int, max_bytes: int) -> list[Entry]:
        """The latest reading of each subject stored before sequence ``before``: those the consumer has, and
        for subjects updated since, their older ones from direct gets (while they fit in ``max_bytes``)."""
        kept: list[Entry] = []
        newer: list[str] = []
        async for msg in self._messages(up_to=self.count):
            seq = msg.metadata.sequence.stream
            if seq < before:
                kept.append(Entry(seq, msg.subject, msg.data))
            else:
                newer.append(msg.subject)
        fetched = 0
        for chunk in _chunks(newer, MULTI_LAST_SUBJECTS):
            if fetched > max_bytes:
                break
            for entry in await direct_last(self._link, chunk, up_to_seq=before - 1):
                kept.append(entry)
                fetched += len(entry.payload)
        return kept

    async def _messages(self, up_to: int | None = None) -> AsyncGenerator[Msg, None]:
        """The consumer's messages in order, while it has any (at most ``up_to``)."""
        pending = (await self._subscription.consumer_info()).num_pending or 0
        received = 0
        while pending > 0 and (up_to is None or received < up_to):
            want = FETCH_BATCH if up_to is None else min(FETCH_BATCH, up_to - received)
            for msg in await self._subscription.fetch(batch=want, timeout=FETCH_TIMEOUT_S):
                received += 1
                pending = msg.metadata.num_pending or 0
                yield msg

    async def _push(self, connection: Connection, entries: list[Entry]) -> int:
        pushed = 0
        for entry in entries:
            frame = event_frame(entry.seq, entry.payload)
            if frame is None or not (self._server_filtered or self._matches(entry.subject)):
                continue
            connection.push_reading(entry.seq, frame)
            pushed += 1
            if connection.buffered_bytes > REPLAY_HIGH_WATER_BYTES:
                await connection.wait_drained()
        return pushed

    def _matches(self, subject: str) -> bool:
        topic = self._subjects.topic_of(subject)
        return topic is not None and any(p.matches(topic.split(".")) for p in self._patterns)


async def direct_last(link: JetStreamLink, subjects: list[str], up_to_seq: int) -> list[Entry]:
    """The last message of each subject stored at or before ``up_to_seq`` (JetStream's direct get, ``multi_last``)."""
    assert link.nc is not None
    if up_to_seq < 1 or not subjects:
        return []
    inbox = link.nc.new_inbox()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    entries: list[Entry] = []

    async def on_message(msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is None and "Nats-Sequence" in headers:
            entries.append(Entry(int(headers["Nats-Sequence"]), headers.get("Nats-Subject", msg.subject), msg.data))
        elif not done.done():
            done.set_result(None) if status in ("204", "404") else done.set_exception(
                nats.js.errors.APIError(description=f"direct get answered {status} {headers.get('Description', '')}")
            )

    subscription = await link.nc.subscribe(inbox, cb=on_message)
    try:
        request = {"multi_last": subjects, "up_to_seq": up_to_seq, "batch": len(subjects)}
        await link.nc.publish(
            f"$JS.API.DIRECT.GET.{link.settings.stream_name}", json.dumps(request).encode(), reply=inbox
        )
        await asyncio.wait_for(done, DIRECT_GET_TIMEOUT_S)
    finally:
        await subscription.unsubscribe()
    return entries


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _delete(js: JetStreamContext, stream: str, consumer: str) -> None:
    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
        await js.delete_consumer(stream, consumer)
