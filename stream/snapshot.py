"""``snapshot=latest``: the latest stored reading of every topic a stream's patterns match, before its live events.

JetStream hands a consumer with ``deliver_policy: last_per_subject`` the last message of each matching subject
as the stream holds it when the consumer is created, in stream order, then every later message. The consumer is
created once the stream has joined the hub at ``live_from`` (the hub's ``last_seq`` then), and what it delivers up
to ``live_from`` is sent; from there on, the live readings held meanwhile follow. A topic whose latest reading
came after ``live_from`` gets it from those, after the ones it had since: every topic's latest reading arrives
once, then everything after it, in stream order (a reading older than the latest of its topic is not news to a
dashboard that just got the latest, and is not sent).

With ``since=``, the snapshot is the state before that time (the latest reading of each topic stored before its
sequence), and the history since then follows. A topic whose latest reading is newer than that has its older
one fetched by JetStream's direct get (``multi_last`` up to a sequence), and the two are merged in stream order.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import nats.js.errors
from nats.aio.msg import Msg

from core.jetstream import JetStreamLink
from core.readings import control_frame
from stream.connection import Connection
from stream.replay import push_stored, read_stored

MULTI_LAST_SUBJECTS = 1024  # nats-server answers a direct get of more subjects with 413 Too Many Results
DIRECT_GET_TIMEOUT_S = 5.0


@dataclass(order=True, slots=True)
class Entry:
    """One reading of the snapshot, ordered by its stream sequence."""

    seq: int
    subject: str = field(compare=False)
    payload: bytes = field(compare=False)


async def send_latest(link: JetStreamLink, connection: Connection, live_from: int, limit: int) -> None:
    """Push each matching topic's latest reading up to ``live_from``, at most ``limit`` topics.

    Beyond ``limit`` (counted from what the consumer has to deliver), the least recently updated are left out
    after a ``reset`` (reason ``snapshot_limit``) that says how many there were.
    """
    skip = 0
    first = True

    async def push(seq: int, subject: str, payload: bytes, pending: int) -> None:
        nonlocal skip, first
        if first:
            first, total = False, pending + 1
            if total > limit:
                skip = total - limit
                connection.push(control_frame("reset", {"reason": "snapshot_limit", "topics": total, "limit": limit}))
        if skip > 0:
            skip -= 1
            return
        await push_stored(connection, seq, payload)

    await read_stored(link, connection.patterns, 0, live_from, push, latest_first=True)


async def send_latest_before(
    link: JetStreamLink, connection: Connection, before: int, live_from: int, limit: int
) -> None:
    """Push each matching topic's latest reading stored before sequence ``before``, in stream order, at most
    ``limit`` topics (the most recently updated).

    Older readings of topics updated since are read while they fit in ``max_buffer_bytes``: the rest of those
    topics start with their history.
    """
    kept: list[Entry] = []
    newer: dict[str, None] = {}
    left = -1  # what the consumer had to deliver when it began: every subject's last message, and no more

    async def collect(seq: int, subject: str, payload: bytes, pending: int) -> bool:
        nonlocal left
        left = (pending + 1 if left < 0 else left) - 1
        if seq < before:
            kept.append(Entry(seq, subject, payload))
        else:
            newer[subject] = None
        return left > 0

    await read_stored(link, connection.patterns, 0, sys.maxsize, collect, latest_first=True)
    fetched = 0
    for chunk in _chunks(list(newer), MULTI_LAST_SUBJECTS):
        if fetched > link.settings.max_buffer_bytes:
            break
        for entry in await direct_last(link, chunk, up_to_seq=before - 1):
            kept.append(entry)
            fetched += len(entry.payload)
    if len(kept) > limit:
        connection.push(control_frame("reset", {"reason": "snapshot_limit", "topics": len(kept), "limit": limit}))
    for entry in sorted(heapq.nlargest(limit, kept)):
        await push_stored(connection, entry.seq, entry.payload)


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
        elif done.done():
            return
        elif status in ("204", "404"):  # the end of the batch; or nothing stored that early
            done.set_result(None)
        else:
            description = f"direct get answered {status} {headers.get('Description', '')}"
            done.set_exception(nats.js.errors.APIError(description=description))

    subscription = await link.nc.subscribe(inbox, cb=on_message)
    try:
        request = {"multi_last": subjects, "up_to_seq": up_to_seq, "batch": len(subjects)}
        subject = f"$JS.API.DIRECT.GET.{link.settings.stream_name}"
        await link.nc.publish(subject, json.dumps(request).encode(), reply=inbox)
        await asyncio.wait_for(done, DIRECT_GET_TIMEOUT_S)
    finally:
        await subscription.unsubscribe()
    return entries


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
