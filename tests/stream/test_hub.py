"""The hub's own metrics, and how it hands a live reading to the connections: written at once when it is alone in its
loop turn, joined with the others of its batch otherwise, counted once either way."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from starlette.types import Message, Send

from core.jetstream import JetStreamLink
from core.readings import event_frame
from core.settings import Settings
from core.topics import Pattern
from stream import connection
from stream.connection import Connection
from stream.fastwrite import chunk
from stream.hub import Hub
from stream.latency import NAME
from stream.limits import Limits
from stream.metrics import StreamMetrics
from stream.slowconsumer import PendingBudget

SUBJECT = "t.s.d.m"
STAMPED = b'{"site":"s","device":"d","metric":"m","value":1,"received_at":"2026-12-03T10:36:57.123456Z"}'


async def test_upstream_pending_is_the_count_of_the_last_delivery() -> None:
    metrics = StreamMetrics()
    hub = Hub(JetStreamLink(Settings(subject_prefix="lag"), "stream"), metrics)
    for seq, pending in ((1, 7), (2, 6), (2, 9)):  # the last one a redelivery: its count is still the latest
        await hub._on_live(seq, "other.s.d.m", b"{}", pending, True)
    assert metrics.registry.get_sample_value("telemetry_stream_upstream_pending") == 9


class TakingTransport:
    """A socket that takes every chunk at once, into ``writes``; or, with ``held`` bytes, one that lags."""

    def __init__(self, writes: list[bytes]) -> None:
        self.writes = writes
        self.held = 0

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.held

    def write(self, data: bytes) -> None:
        self.writes.append(data)


class Streams:
    """A hub whose connections write pre-framed chunks into ``written`` (as on uvicorn's httptools protocol, where
    the socket takes them at once) and everything else with ``send`` into ``sent``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.metrics = StreamMetrics()
        self.hub = Hub(JetStreamLink(Settings(subject_prefix="t"), "stream"), self.metrics)
        self.metrics.watch(lambda: (self.hub.events_sent, 0))
        self.budget = PendingBudget(1 << 30, self.hub.connections)
        self.written: dict[Connection, list[bytes]] = {}
        self.transports: dict[Connection, TakingTransport] = {}
        self.sent: list[Message] = []
        monkeypatch.setattr(connection, "chunked_transport", self._transport)
        self._opening: Connection | None = None

    def _transport(self, send: Send) -> asyncio.Transport:
        assert self._opening is not None
        transport = self.transports[self._opening] = TakingTransport(self.written.setdefault(self._opening, []))
        return cast(asyncio.Transport, transport)

    def open(self, rate_per_s: float = 1000.0, max_events: int = 0) -> Connection:
        """A live stream on ``s.>``, open, with its ``retry`` written."""
        limits = Limits(rate_per_s=rate_per_s, max_events=max_events, max_buffer_bytes=1 << 20, send_buffer_bytes=0)
        opened = Connection(
            [Pattern.parse("s.>")],
            last_seq=0,
            replaying=False,
            limits=limits,
            mark_dirty=self.hub.mark_dirty,
            budget=self.budget,
            metrics=self.metrics,
        )
        opened.on_written = self.hub.count_written
        self.hub.connections.add(opened)
        self.hub._route(opened)

        async def send(message: Message) -> None:
            self.sent.append(message)

        self._opening = opened
        opened.open(send)
        self._opening = None
        return opened

    def count(self, name: str) -> float | None:
        return self.metrics.registry.get_sample_value(name)


def framed(*seqs: int) -> bytes:
    """The chunk of the readings ``seqs`` written together."""
    frames = [event_frame(seq, STAMPED) for seq in seqs]
    return chunk(b"".join(frame for frame in frames if frame is not None))


async def test_a_reading_alone_in_its_turn_is_written_at_once_to_each_stream_and_counted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streams = Streams(monkeypatch)
    first, second = streams.open(), streams.open()
    await streams.hub._on_live(1, SUBJECT, STAMPED, 0, True)
    assert streams.written == {first: [framed(1)], second: [framed(1)]}  # before the loop turns
    await asyncio.sleep(0)  # the end of the turn writes nothing more
    assert streams.written == {first: [framed(1)], second: [framed(1)]}
    assert first.sent_events == second.sent_events == 1
    assert first.sent_bytes == second.sent_bytes == len(framed(1))
    assert streams.count("telemetry_stream_events_sent_total") == 2
    assert streams.count("telemetry_stream_bytes_sent_total") == 2 * len(framed(1))
    assert streams.count(f"{NAME}_count") == 2


async def test_a_reading_for_a_stream_whose_socket_lags_goes_through_send_after_what_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streams = Streams(monkeypatch)
    taking, lagging = streams.open(), streams.open()
    streams.transports[lagging].held = 100  # bytes of an earlier write the client has not read yet
    await streams.hub._on_live(1, SUBJECT, STAMPED, 0, True)
    assert streams.written == {taking: [framed(1)], lagging: []}
    await asyncio.sleep(0)  # the end of the turn hands it to uvicorn's send, which waits for room in order
    [message] = streams.sent
    assert message["body"] == event_frame(1, STAMPED) and message["more_body"] is True
    assert streams.written == {taking: [framed(1)], lagging: []}
    assert streams.count("telemetry_stream_events_sent_total") == 2


async def test_the_readings_of_a_batch_are_written_together_at_the_end_of_its_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streams = Streams(monkeypatch)
    first, second = streams.open(), streams.open()
    for seq in (1, 2, 3):
        await streams.hub._on_live(seq, SUBJECT, STAMPED, 3 - seq, seq == 3)
    assert streams.written == {first: [], second: []}  # the last of the batch waits behind the others
    await asyncio.sleep(0)
    assert streams.written == {first: [framed(1, 2, 3)], second: [framed(1, 2, 3)]}
    assert streams.count("telemetry_stream_events_sent_total") == 6
    assert streams.count("telemetry_stream_bytes_sent_total") == 2 * len(framed(1, 2, 3))
    assert streams.count(f"{NAME}_count") == 6


async def test_a_reading_written_at_once_keeps_to_the_rate_and_to_max_events(monkeypatch: pytest.MonkeyPatch) -> None:
    streams = Streams(monkeypatch)
    paced, limited = streams.open(rate_per_s=1.0), streams.open(max_events=1)
    await streams.hub._on_live(1, SUBJECT, STAMPED, 0, True)
    await streams.hub._on_live(2, SUBJECT, STAMPED, 0, True)  # beyond both streams' limits
    assert streams.written == {paced: [framed(1)], limited: [framed(1)]}
    assert [seq for seq, _frame in paced.pacer.waiting.values()] == [2]  # conflated: it waits for the next token
    assert limited.ending and limited.end_reason == "max_events"
    await asyncio.sleep(0)
    [end] = streams.sent  # after the reading, through ``send``: it completes the response
    assert end["body"].startswith(b"event: end\n") and end["more_body"] is False
    assert streams.count("telemetry_stream_events_sent_total") == 2
    paced.close()
