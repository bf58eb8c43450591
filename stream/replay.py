"""Resume: where a client with ``Last-Event-ID`` N starts, and the replay that brings it up to the live feed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from core.jetstream import JetStreamLink
from core.readings import control_frame, event_frame
from core.topics import Subjects, distinct_filters
from stream.connection import REPLAY_HIGH_WATER_BYTES, Connection
from stream.upstream import OrderedFeed


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """Replay everything after ``start_after``; send ``reset`` first when that is not what was asked."""

    start_after: int
    reset_reason: str | None = None
    requested: int = 0

    def reset_frame(self) -> bytes | None:
        """The in-band ``reset`` event: what was asked, why it cannot be had, where the replay starts."""
        if self.reset_reason is None:
            return None
        return control_frame(
            "reset",
            {"reason": self.reset_reason, "requested_id": self.requested, "first_available_id": self.start_after + 1},
        )


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
    oldest_allowed = state.last_seq - link.settings.max_replay
    if start_after < oldest_allowed:
        reason, start_after = "replay_limit", oldest_allowed
    return ResumePlan(start_after=start_after, reset_reason=reason, requested=requested)


async def replay(link: JetStreamLink, connection: Connection, start_after: int, upto: int) -> int:
    """Push the stored readings in (start_after, upto] that match the connection; returns how many.

    A short-lived ordered consumer filtered on the connection's patterns (or on everything, matched
    here, when the patterns overlap in a way JetStream refuses). The client's own pace bounds it.
    """
    if upto <= start_after:
        return 0
    assert link.nc is not None and link.js is not None and link.security is not None
    subjects = Subjects(link.settings.subject_prefix)
    patterns = connection.patterns
    distinct = distinct_filters(patterns)
    filters = [subjects.all] if distinct is None else [subjects.for_pattern(p) for p in distinct]
    server_filtered = distinct is not None  # JetStream sends exactly what the patterns match
    finished = asyncio.get_running_loop().create_future()
    count = 0

    def finish() -> None:
        if not finished.done():
            finished.set_result(None)

    async def on_message(seq: int, subject: str, payload: bytes, pending: int) -> None:
        nonlocal count
        if seq > upto:
            finish()
            return
        frame = event_frame(seq, payload)
        if frame is not None and (server_filtered or matches(subject)):
            connection.push_reading(seq, frame)
            count += 1
            if connection.buffered_bytes > REPLAY_HIGH_WATER_BYTES:
                await connection.wait_drained()
        if seq >= upto or pending == 0:
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
        handler=on_message,
        connect_timeout_s=link.settings.nats_connect_timeout_s,
        security=link.security,
        name="replay",
    )
    try:
        if await feed.start() > 0:
            await finished
    finally:
        await feed.close()
    return count
