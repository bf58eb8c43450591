"""Resume: where a client with ``Last-Event-ID`` N (or ``since=`` a time) starts, and the replay that brings it up
to the live feed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.js.errors
from nats.js.api import StreamState

from core.jetstream import JetStreamLink
from core.readings import control_frame, event_frame, format_ts
from core.topics import Pattern, Subjects, distinct_filters
from stream.connection import REPLAY_HIGH_WATER_BYTES, Connection
from stream.upstream import OrderedFeed

NO_MESSAGE_FOUND = 10037  # JetStream's error code when no stored message matches a get
API_TIMEOUT_S = 5.0  # as nats-py's JetStream requests


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """Replay everything after ``start_after``; send ``reset`` first when that is not what was asked."""

    start_after: int
    reset_reason: str | None = None
    requested: int | None = None  # the event id asked for
    requested_time: datetime | None = None  # or the time (since=)

    def reset_frame(self) -> bytes | None:
        """The in-band ``reset`` event: what was asked, why it cannot be had, where the replay starts."""
        if self.reset_reason is None:
            return None
        data: dict[str, object] = {"reason": self.reset_reason}
        if self.requested is not None:
            data["requested_id"] = self.requested
        if self.requested_time is not None:
            data["requested_time"] = format_ts(self.requested_time)
        data["first_available_id"] = self.start_after + 1
        return control_frame("reset", data)


async def plan_resume(link: JetStreamLink, requested: int) -> ResumePlan:
    """Check the requested id against what the stream still holds.

    Older than the oldest stored reading: a ``reset`` event (reason ``history_expired``) and everything
    stored. Beyond the newest (the stream was recreated, or the id is not one of ours): a ``reset``
    (reason ``unknown_id``) and everything stored, since nothing stored can be known to the client.
    More than ``max_replay`` sequences back: a ``reset`` (reason ``replay_limit``) and the last
    ``max_replay`` sequences.
    """
    assert link.js is not None
    state = (await link.js.stream_info(link.settings.stream_name)).state
    first_available = state.first_seq or 1
    if requested > state.last_seq:
        reason, start_after = "unknown_id", first_available - 1
    elif requested < first_available - 1:
        reason, start_after = "history_expired", first_available - 1
    else:
        reason, start_after = None, requested
    start_after, reason = _within_max_replay(state, start_after, reason, link.settings.max_replay)
    return ResumePlan(start_after=start_after, reset_reason=reason, requested=requested)


async def plan_since(link: JetStreamLink, since: datetime) -> ResumePlan:
    """Start at the first reading stored at or after ``since``.

    When the stream has dropped readings (its first is not its sequence 1) and its first is already newer than
    ``since``, some of what was asked for may be gone: a ``reset`` (reason ``history_expired``) says so. More than
    ``max_replay`` sequences back: a ``reset`` (reason ``replay_limit``) and the last ``max_replay`` sequences.
    """
    assert link.js is not None
    state = (await link.js.stream_info(link.settings.stream_name)).state
    # A time to come is live only (and nats-server's nanosecond clock ends in 2262).
    first = await first_stored_since(link, since) if since < datetime.now(UTC) else None
    start_after = state.last_seq if first is None else first - 1
    first_available = state.first_seq or 1
    expired = first is not None and first <= first_available and first_available > 1
    start_after, reason = _within_max_replay(
        state, start_after, "history_expired" if expired else None, link.settings.max_replay
    )
    return ResumePlan(start_after=start_after, reset_reason=reason, requested_time=since)


async def first_stored_since(link: JetStreamLink, since: datetime) -> int | None:
    """The sequence of the first reading stored at or after ``since`` (JetStream's own time), or None."""
    assert link.nc is not None
    request = {"start_time": since.isoformat(), "next_by_subj": Subjects(link.settings.subject_prefix).all}
    subject = f"$JS.API.STREAM.MSG.GET.{link.settings.stream_name}"
    reply = await link.nc.request(subject, json.dumps(request).encode(), timeout=API_TIMEOUT_S)
    answer = json.loads(reply.data)
    error = answer.get("error")
    if error is None:
        return int(answer["message"]["seq"])
    if error.get("err_code") == NO_MESSAGE_FOUND:
        return None
    raise nats.js.errors.APIError(code=error.get("code"), description=error.get("description"))


def _within_max_replay(
    state: StreamState, start_after: int, reason: str | None, max_replay: int
) -> tuple[int, str | None]:
    """At most ``max_replay`` sequences back from the newest: else ``replay_limit`` and the last ``max_replay``."""
    oldest_allowed = state.last_seq - max_replay
    if start_after < oldest_allowed:
        return oldest_allowed, "replay_limit"
    return start_after, reason


# on_message(stream sequence, subject, payload, messages still pending after this one): False to stop reading
StoredHandler = Callable[[int, str, bytes, int], Awaitable[bool | None]]


async def replay(link: JetStreamLink, connection: Connection, start_after: int, upto: int) -> None:
    """Push the stored readings in (start_after, upto] that match the connection (counted as they are written).

    The client's own pace bounds it: the replay waits while the client is far behind.
    """

    async def push(seq: int, subject: str, payload: bytes, pending: int) -> None:
        await push_stored(connection, seq, payload)

    await read_stored(link, connection.patterns, start_after, upto, push)


async def push_stored(connection: Connection, seq: int, payload: bytes) -> None:
    """Queue one stored reading for the connection (nothing for a payload that is not one of ours)."""
    frame = event_frame(seq, payload)
    if frame is None:
        return
    connection.push_reading(seq, frame)
    if connection.buffered_bytes > REPLAY_HIGH_WATER_BYTES:
        await connection.wait_drained()


async def read_stored(
    link: JetStreamLink,
    patterns: list[Pattern],
    start_after: int,
    upto: int,
    on_message: StoredHandler,
    *,
    latest_first: bool = False,
) -> None:
    """Hand ``on_message`` the stored messages in (start_after, upto] that match the patterns, in stream order,
    until it returns False.

    A short-lived ordered consumer filtered on the patterns (or on everything, matched here, when the patterns
    overlap in a way JetStream refuses). ``latest_first``: only the last message of each subject comes first
    (stream/snapshot.py).
    """
    if upto <= start_after:
        return
    assert link.nc is not None and link.js is not None and link.security is not None
    subjects = Subjects(link.settings.subject_prefix)
    distinct = distinct_filters(patterns)
    filters = [subjects.all] if distinct is None else [subjects.for_pattern(p) for p in distinct]
    server_filtered = distinct is not None  # JetStream sends exactly what the patterns match
    finished = asyncio.get_running_loop().create_future()

    def finish() -> None:
        if not finished.done():
            finished.set_result(None)

    async def on_delivery(seq: int, subject: str, payload: bytes, pending: int, ends_batch: bool) -> None:
        if seq > upto:
            finish()
            return
        wanted = server_filtered or matches(subject)
        if (wanted and await on_message(seq, subject, payload, pending) is False) or seq >= upto or pending == 0:
            finish()

    def matches(subject: str) -> bool:
        topic = subjects.topic_of(subject)
        return topic is not None and any(p.matches(topic.split(".")) for p in patterns)

    feed = OrderedFeed(
        link.nc,
        link.js,
        stream=link.settings.stream_name,
        filters=filters,
        start_seq=start_after + 1,
        handler=on_delivery,
        connect_timeout_s=link.settings.nats_connect_timeout_s,
        security=link.security,
        name="snapshot" if latest_first else "replay",
        latest_first=latest_first,
    )
    try:
        if await feed.start() > 0:
            await finished
    finally:
        await feed.close()
