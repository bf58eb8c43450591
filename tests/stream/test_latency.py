"""The end-to-end latency histogram: each live reading written counted once, with its age at the write."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from support.metrics import metric
from support.sse import Serve, events, seqs, take

from core.readings import KEEPALIVE_FRAME, Reading, control_frame, event_frame, stored_payload
from core.settings import Settings
from stream.app import create_app
from stream.latency import BUCKETS_S, NAME, EndToEndLatency, first_live, received_at


def frame_received(moment: datetime, seq: int = 1) -> bytes:
    """A reading's frame as the hub makes it, stored by the ingest at ``moment``."""
    frame = event_frame(seq, stored_payload(Reading(site="s", device="d", metric="m", value=1.5), moment))
    assert frame is not None
    return frame


def exposed(latency: EndToEndLatency) -> dict[str, float]:
    """The histogram's samples as a scrape shows them, by name and ``le``."""
    registry = CollectorRegistry()
    registry.register(latency)
    samples = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(NAME):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_received_at_is_read_from_the_end_of_the_frame() -> None:
    moment = datetime(2026, 12, 3, 10, 36, 57, 123456, tzinfo=UTC)
    assert received_at(frame_received(moment)) == moment.timestamp()
    assert received_at(event_frame(7, b'{"topic":"a.b.c","value":1}') or b"") is None  # not written by the ingest
    assert received_at(KEEPALIVE_FRAME) is None


def test_first_live_skips_control_frames_and_history() -> None:
    old, new = frame_received(datetime.now(UTC), 1), frame_received(datetime.now(UTC), 2)
    reset = control_frame("reset", {"reason": "unknown_id"})
    assert first_live([KEEPALIVE_FRAME, old, new], 0) == (old,)
    assert first_live([reset, old, KEEPALIVE_FRAME, new], 1) == (new,)
    assert first_live([old, new], 2) == ()


def test_writes_count_their_live_readings_with_the_age_of_the_oldest() -> None:
    latency = EndToEndLatency()
    now = time.monotonic()
    wall = datetime.now(UTC)
    recent, older = frame_received(wall - timedelta(milliseconds=3)), frame_received(wall - timedelta(seconds=7))
    for _ in range(3):  # one reading fanned out to three connections in one turn: one group
        latency.observe([recent], 0, 1, now)
    latency.observe([older, recent], 0, 2, now)  # a client behind: its write starts with an older reading
    latency.observe([older, recent], 1, 1, now + 1)  # the older one replayed: only the recent one is live
    samples = exposed(latency)
    assert samples[f"{NAME}_count"] == 6
    assert samples[f'{NAME}_bucket{{le="0.0025"}}'] == 0
    assert samples[f'{NAME}_bucket{{le="0.005"}}'] == 3
    assert samples[f'{NAME}_bucket{{le="1.0"}}'] == 3
    assert samples[f'{NAME}_bucket{{le="2.5"}}'] == 4  # the live one behind a replayed one, written 1 s later
    assert samples[f'{NAME}_bucket{{le="5.0"}}'] == 4
    assert samples[f'{NAME}_bucket{{le="10.0"}}'] == samples[f'{NAME}_bucket{{le="+Inf"}}'] == 6
    assert 3 * 0.003 + 2 * 7 + 1 < samples[f"{NAME}_sum"] < 3 * 0.005 + 2 * 7.1 + 1.1
    assert [float(le) for le in BUCKETS_S] == sorted(BUCKETS_S) and BUCKETS_S[0] == 0.0005 and BUCKETS_S[-1] == 30


def test_a_clock_ahead_at_the_ingest_lands_in_the_first_bucket() -> None:
    """The ingest's and the stream's clocks differ: a negative age is counted, in the lowest bucket."""
    latency = EndToEndLatency()
    latency.observe([frame_received(datetime.now(UTC) + timedelta(seconds=2))], 0, 4, time.monotonic())
    samples = exposed(latency)
    assert samples[f'{NAME}_bucket{{le="0.0005"}}'] == samples[f"{NAME}_count"] == 4
    assert samples[f"{NAME}_sum"] < 0


def test_readings_not_stamped_by_the_ingest_are_not_counted() -> None:
    latency = EndToEndLatency()
    foreign = event_frame(9, b'{"topic":"a.b.c","value":1}')
    assert foreign is not None
    latency.observe([foreign], 0, 1, time.monotonic())
    assert exposed(latency)[f"{NAME}_count"] == 0


@pytest.mark.parametrize("h11", [False, True], ids=["pre-framed writes", "ASGI send"])
async def test_the_service_counts_each_live_reading_written_and_no_replayed_one(
    settings: Settings, serve: Serve, publish: Any, h11: bool
) -> None:
    stored = await publish("lat", "d", "m", [1, 2, 3])
    async with serve(create_app(settings), http="h11" if h11 else "httptools") as url:
        async with events(url, "lat.>") as first, events(url, "lat.>", last_event_id=stored[0]) as resumed:
            assert seqs(await take(resumed, 2)) == stored[1:]  # history: not in the histogram
            live = await publish("lat", "d", "m", [4, 5])
            assert seqs(await take(first, 2)) == seqs(await take(resumed, 2)) == live
        count = await metric(url, f"{NAME}_count")
        within_30_s = await metric(url, f'{NAME}_bucket{{le="30.0"}}')
        total = await metric(url, f"{NAME}_sum")
        sent = await metric(url, "telemetry_stream_events_sent_total")
        replayed = await metric(url, "telemetry_stream_replayed_events_total")
    assert (count, sent, replayed) == (4, 6, 2)
    assert within_30_s == 4 and 0 < total < 4 * 30
