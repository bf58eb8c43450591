"""The pacer: its token bucket, waiting readings released in stream order, a release costing what it sends, not what
waits."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from core.readings import Reading, event_frame, stored_payload
from core.tallies import Tally
from stream.limits import TokenBucket
from stream.pacing import Pacer

NOW = datetime(2026, 11, 27, tzinfo=UTC)
BACKLOG_TOPICS = 100_000


class CountingDict(OrderedDict[str, Any]):
    """A dict that counts the keys and items anyone walks through: the work a release does on the backlog."""

    walked = 0

    def __iter__(self) -> Iterator[str]:
        for key in super().__iter__():
            CountingDict.walked += 1
            yield key

    def items(self) -> Any:
        CountingDict.walked += len(self)
        return super().items()

    def values(self) -> Any:
        CountingDict.walked += len(self)
        return super().values()


def frame(seq: int, topic: str) -> bytes:
    site, device, metric = topic.split(".")
    reading = Reading(site=site, device=device, metric=metric, value=float(seq))
    made = event_frame(seq, stored_payload(reading, NOW))
    assert made is not None
    return made


def pacer(rate_per_s: float, conflated: Tally | None = None) -> Pacer:
    return Pacer(rate_per_s, on_due=lambda: None, conflated=conflated or Tally())


def test_waiting_readings_go_out_in_stream_order_the_latest_per_topic() -> None:
    conflated = Tally()
    paced = pacer(1000.0, conflated)
    for seq, topic in [(1, "s.a.m"), (2, "s.b.m"), (3, "s.a.m"), (4, "s.c.m"), (5, "s.b.m")]:
        paced.hold(topic, seq, frame(seq, topic))
    released = paced.release(now=time.monotonic(), room_bytes=1 << 20)
    assert released == [frame(3, "s.a.m"), frame(4, "s.c.m"), frame(5, "s.b.m")]
    assert conflated.count == 2  # 1 and 2, replaced by newer readings of their topics
    assert paced.bytes == 0


def test_a_release_walks_what_it_sends_not_the_backlog() -> None:
    paced = pacer(10.0)  # a bucket of 10 tokens
    paced.waiting = CountingDict()
    for seq in range(1, BACKLOG_TOPICS + 1):
        paced.hold(f"s.d{seq}.m", seq, b"id: %d\n" % seq)
    CountingDict.walked = 0
    now = time.monotonic()  # the bucket refills with time: the same moment for both releases
    released = paced.release(now=now, room_bytes=1 << 20)
    assert [f.split(b"\n")[0] for f in released] == [b"id: %d" % seq for seq in range(1, 11)]  # the oldest
    assert CountingDict.walked <= len(released)
    assert paced.release(now=now, room_bytes=1 << 20) == []  # no token left: nothing walked, nothing sent
    assert CountingDict.walked <= len(released)


def test_a_release_stops_at_the_room_it_is_given() -> None:
    paced = pacer(1e6)
    frames = [frame(seq, f"s.d{seq}.m") for seq in range(1, 101)]
    for seq, made in enumerate(frames, start=1):
        paced.hold(f"s.d{seq}.m", seq, made)
    released = paced.release(now=time.monotonic(), room_bytes=10 * len(frames[0]))
    assert released == frames[:10]
    assert paced.bytes == sum(map(len, frames[10:]))


def test_a_bucket_gives_a_seconds_worth_at_once_then_one_token_an_interval() -> None:
    bucket = TokenBucket(8.0)  # an interval of 1/8 s: the moments below are exact in floats
    later = 1e6  # long after the bucket filled: it holds 8 tokens, not what the time since would bring
    assert [bucket.take(later) for _ in range(9)] == [True] * 8 + [False]
    assert not bucket.take(later + 0.0625)
    assert bucket.take(later + 0.125)
    assert not bucket.take(later + 0.125)
    assert [bucket.take(later + 10.0) for _ in range(9)] == [True] * 8 + [False]
