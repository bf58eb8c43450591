"""Slow consumers over real sockets: cut off once their bytes stop moving, and held under the process's budget."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from support.metrics import metric, metric_becomes
from support.sse import Serve, events, never_reading, read_until_closed, seqs, take

from core.settings import Settings
from stream.app import create_app
from stream.slowconsumer import SHED_TO, PendingBudget, Progress

CUT_OFF_WITHIN_S = 60.0  # rounds until any kernel's socket buffers are full, plus the timeout, on a loaded machine
PADDING = 2000  # bytes of tags per reading: a frame of about 2.3 KB
ROUND = 20


@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_a_client_that_stops_reading_is_cut_off_once_its_bytes_stop_moving_without_new_events(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any, http: str
) -> None:
    # No keep-alive and no reading is written after the traffic stops: only the ticker's look at the bytes that
    # wait can end the stream.
    settings = make_settings(slow_consumer_timeout_s=1.0, keepalive_s=600.0, max_rate_per_s=1e6)
    async with serve(create_app(settings), http=http) as url:
        with never_reading(url, "s.>") as stuck:
            await metric_becomes(url, "telemetry_stream_connections_active", 1)
            async with asyncio.timeout(CUT_OFF_WITHIN_S):
                # Until bytes wait in the service: the kernel's buffers of this socket are full.
                while await metric(url, "telemetry_stream_pending_bytes") == 0:
                    await publish("s", "d", "m", [float(i) for i in range(ROUND)], padding=PADDING)
            ended = 'telemetry_stream_ended_connections_total{reason="slow_consumer"}'
            await metric_becomes(url, ended, 1, timeout_s=CUT_OFF_WITHIN_S)
            await read_until_closed(stuck)  # the server closed the connection
        await metric_becomes(url, "telemetry_stream_connections_active", 0)
        await metric_becomes(url, "telemetry_stream_pending_bytes", 0)


async def test_past_the_pending_budget_the_stuck_clients_are_cut_and_the_reader_gets_everything(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each reading on a topic of its own: conflating a stuck client's queue frees nothing, so the budget must cut.
    # The slow-consumer timeout is out of reach: only the budget can end them.
    budget_bytes = 256 << 10
    settings = make_settings(
        max_pending_bytes=budget_bytes, slow_consumer_timeout_s=600.0, keepalive_s=600.0, max_rate_per_s=1e6
    )
    peak = watch_peak_total(monkeypatch)
    async with serve(create_app(settings)) as url:
        with contextlib.ExitStack() as stack:
            stuck = [stack.enter_context(never_reading(url, "s.>")) for _ in range(3)]
            async with events(url, "s.>") as reader:
                await metric_becomes(url, "telemetry_stream_connections_active", 4)
                stored: list[int] = []
                received: list[Any] = []
                cut = 'telemetry_stream_ended_connections_total{reason="memory_budget"}'
                async with asyncio.timeout(CUT_OFF_WITHIN_S):
                    while await metric(url, cut) < len(stuck):
                        for _ in range(ROUND):
                            stored += await publish("s", f"d{len(stored)}", "m", [1.0], padding=PADDING)
                        received += await take(reader, ROUND)
                assert seqs(received) == stored  # the reader got everything, in order
                for sock in stuck:
                    await read_until_closed(sock)
                assert await metric(url, "telemetry_stream_connections_active") == 1
        await metric_becomes(url, "telemetry_stream_pending_bytes", 0)
    assert 0 < peak[0] <= budget_bytes


def watch_peak_total(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The largest total the budget had after a connection's change was counted (and any shedding it caused)."""
    peak = [0]
    depth = [0]  # changes counted while shedding are the shedding's own, not a result
    count = PendingBudget.add

    def add(budget: PendingBudget, delta: int) -> None:
        depth[0] += 1
        try:
            count(budget, delta)
        finally:
            depth[0] -= 1
        if depth[0] == 0:
            peak[0] = max(peak[0], budget.total)

    monkeypatch.setattr(PendingBudget, "add", add)
    return peak


def test_progress_counts_a_stall_from_the_first_sample_that_saw_it() -> None:
    progress = Progress(now=0.0)
    assert progress.sample(out_bytes=100, waiting=True, now=10.0) == 0.0  # bytes left since the last look
    assert progress.sample(out_bytes=100, waiting=True, now=11.0) == 0.0  # the first look that sees none leave
    assert progress.sample(out_bytes=100, waiting=True, now=13.5) == 2.5
    assert progress.sample(out_bytes=90, waiting=True, now=14.0) == 3.0  # a write piled up: still none left
    assert progress.moved_at == 10.0
    assert progress.sample(out_bytes=101, waiting=True, now=15.0) == 0.0  # moving again
    assert progress.sample(out_bytes=101, waiting=False, now=20.0) == 0.0  # nothing waits: nothing stalls
    assert progress.sample(out_bytes=101, waiting=True, now=21.0) == 0.0
    assert progress.moved_at == 20.0


class FakeConnection:
    """What the budget sees of a connection: its bytes, when they last moved, conflating and cutting."""

    def __init__(self, budget: PendingBudget, pending: int, moved_at: float, queued: int) -> None:
        self.budget = budget
        self.pending_bytes = 0
        self.moved_at = moved_at
        self.queued = queued  # what conflating its queue frees
        self.steps: list[str] = []
        self.set_pending(pending)

    def set_pending(self, pending: int) -> None:
        delta, self.pending_bytes = pending - self.pending_bytes, pending
        self.budget.add(delta)

    def conflate_queue(self) -> None:
        self.steps.append("conflated")
        self.set_pending(self.pending_bytes - self.queued)
        self.queued = 0

    def cut(self, reason: str) -> None:
        self.steps.append(reason)
        self.set_pending(0)


def test_the_budget_conflates_then_cuts_the_connections_stalled_longest_and_stops_below_it() -> None:
    connections: list[FakeConnection] = []
    budget = PendingBudget(1000, connections)
    reader = FakeConnection(budget, 300, moved_at=3.0, queued=300)
    older = FakeConnection(budget, 100, moved_at=1.0, queued=50)
    newer = FakeConnection(budget, 200, moved_at=2.0, queued=300)
    connections += [reader, older, newer]
    assert budget.total == 600
    newer.set_pending(700)  # 1100: over the limit, the one whose bytes stopped moving first goes first
    assert older.steps == ["conflated", "memory_budget"]  # conflating it was not enough: 1050, then 1000
    assert newer.steps == ["conflated"]  # conflating it was: 700, below SHED_TO of the limit
    assert reader.steps == []
    assert budget.total == 700 <= SHED_TO * budget.limit_bytes
