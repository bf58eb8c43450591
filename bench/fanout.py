"""Workload 1, fan-out cost: server CPU per delivered event, minus a run with no subscriber.

1,000 readings are posted through the ingest service (the references with their own NATS
subscription get the same messages; Nchan gets the same data POSTed to its publisher, one message
per request), either **spaced** (one reading per POST, the next after the answer) or in **bursts**
(100 per POST; for Nchan 100 pipelined POSTs). Spaced POSTs can outpace a server's fan-out (each
event to 500 sockets takes milliseconds), and then several readings reach it in one loop turn; the
extra **lockstep** regime (one reading per POST, the next once every subscriber has the previous
one) makes sure each event is alone in its turn, which is the hard case spaced is meant to be.
The clock runs from the first POST until every subscriber has every event; the CPU is the measured
server's own (``/proc/PID/stat``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from bench.load import Group, HttpClient, open_group, stream_request, wait_progress
from bench.procs import cpu_busy_s
from bench.targets import Server

Regime = Literal["spaced", "lockstep", "burst"]
BURST = 100
SETTLE_S = 0.2
STALL_S = 10.0
WARMUP_READINGS = 100
FAN_PATTERN = "fan.>"
_runs = itertools.count(1)


def reading(run: int, index: int) -> dict[str, object]:
    """A realistic reading on ``fan.<device>.temperature`` with a unique id."""
    return {
        "site": "fan",
        "device": f"dev-{index % 100:03d}",
        "metric": "temperature",
        "value": 20.0 + (index % 50) / 10,
        "unit": "C",
        "tags": {"line": "a", "zone": "north"},
        "id": f"fan-{run}-{index}",
    }


class Publisher:
    """Posts readings to the ingest service, or the same data to Nchan's publisher location."""

    def __init__(self, port: int, *, nchan: bool) -> None:
        self.port = port
        self.nchan = nchan
        self.client: HttpClient | None = None
        self.failures = 0

    async def publish(self, regime: Regime, count: int, group: Group, also: Sequence[Publisher] = ()) -> float:
        """Post ``count`` readings; returns when the last answer came (perf_counter). ``also``: publishers that post
        each reading too, before the lockstep wait (side by side: Nchan's beside the ingest's).

        A new connection per round: uvicorn closes a keep-alive connection idle for 5 s, which the
        time spent opening thousands of subscribers between rounds easily exceeds.
        """
        publishers = (self, *also)
        for publisher in publishers:
            await publisher.close()
            publisher.client = await HttpClient.open(publisher.port)
        run = next(_runs)
        items = [reading(run, index) for index in range(count)]
        size = BURST if regime == "burst" else 1
        delivered = group.received
        for start in range(0, len(items), size):
            batch = items[start : start + size]
            for publisher in publishers:
                await publisher.post(batch, start)
            if regime == "lockstep":
                delivered += len(group.members)
                if not await group.wait_received(delivered, STALL_S):
                    break  # counted as lost by the caller
        return time.perf_counter()

    async def post(self, batch: list[dict[str, object]], start: int) -> None:
        """Post one batch (``start``: the index of its first reading in the round)."""
        if self.nchan:
            await self._publish_nchan(batch, start)
        else:
            await self._publish_ingest(batch, len(batch) == 1)

    async def _publish_ingest(self, batch: list[dict[str, object]], single: bool) -> None:
        assert self.client is not None
        body = json.dumps(batch[0] if single else batch, separators=(",", ":")).encode()
        try:
            status, _ = await self.client.post("/v1/readings", body)
        except (ConnectionError, asyncio.IncompleteReadError):
            # The readings carry ids, so posting them again cannot store them twice.
            await self.close()
            self.client = await HttpClient.open(self.port)
            status, _ = await self.client.post("/v1/readings", body)
        if status != 202:
            self.failures += len(batch)

    async def _publish_nchan(self, batch: list[dict[str, object]], start: int) -> None:
        assert self.client is not None
        for offset, item in enumerate(batch):  # pipelined: a burst reaches nginx in one read
            data = {"seq": start + offset + 1, "topic": f"fan.{item['device']}.temperature", **item}
            data["received_at"] = "2026-11-27T07:00:00.123456Z"
            self.client.send("/pub", json.dumps(data, separators=(",", ":")).encode(), "text/plain")
        for _ in batch:
            status, _ = await self.client.response()
            if not 200 <= status < 300:
                self.failures += 1

    async def close(self) -> None:
        """Close the connection."""
        if self.client is not None:
            client, self.client = self.client, None
            with contextlib.suppress(OSError):
                await client.close()


@dataclass
class Sample:
    """One timed round."""

    cpu_s: float
    wall_s: float
    lag_s: float  # from the last POST's answer to the last delivery: > 0 when the server fell behind
    lost: int
    extra: int
    other_cpu_s: float  # what else ran on the server's CPU meanwhile (other processes, interrupts)


@dataclass
class FanoutResult:
    """The figure for one server, subscriber count and regime."""

    server: str
    subscribers: int
    regime: Regime
    us_per_event: float
    cpu_s: float
    baseline_cpu_s: float
    delivered: int
    lost: int
    extra: int
    wall_s: float
    lag_s: float
    post_failures: int
    other_cpu_s: float


async def measure(server: Server, group: Group, publisher: Publisher, regime: Regime, readings: int) -> Sample:
    """Post the readings and wait until every subscriber has them all (or progress stalls)."""
    group.arm(readings)
    if not group.members:
        group.all_reached.set()
    goal = sum(member.goal for member in group.members)
    cpu_before, busy_before = server.child.cpu_s(), cpu_busy_s(server.cpu)
    started = time.perf_counter()
    last_answer = await publisher.publish(regime, readings, group)
    await wait_progress(group.total, goal, group.all_reached, stall_s=STALL_S)
    finished = max([last_answer, *(member.reached_at for member in group.members)])
    await asyncio.sleep(SETTLE_S)
    cpu = server.child.cpu_s() - cpu_before
    other = cpu_busy_s(server.cpu) - busy_before - cpu
    return Sample(cpu, finished - started, finished - last_answer, group.missing(), group.extra(), other)


async def fanout(
    server: Server,
    publisher: Publisher,
    counts: list[int],
    regimes: list[Regime],
    readings: int,
    repeats: int,
    headers: dict[str, str] | None = None,
) -> list[FanoutResult]:
    """Baselines without subscribers, then each subscriber count with each regime; medians of ``repeats``.

    ``headers`` go with every subscriber's GET (the credentials when the server requires auth).
    """
    request = stream_request(server.port, "/v1/stream", [FAN_PATTERN], headers)
    empty = Group()
    await measure(server, empty, publisher, "burst", WARMUP_READINGS)
    baseline = {
        regime: statistics.median(
            [(await measure(server, empty, publisher, regime, readings)).cpu_s for _ in range(repeats)]
        )
        for regime in regimes
    }
    results = []
    for count in counts:
        group = await open_group(server.port, request, count, ready_marker=server.ready_marker)
        try:
            await server.confirm(count)
            await measure(server, group, publisher, "burst", WARMUP_READINGS)
            for regime in regimes:
                samples = [await measure(server, group, publisher, regime, readings) for _ in range(repeats)]
                cpu = statistics.median(sample.cpu_s for sample in samples)
                delivered = count * readings
                results.append(
                    FanoutResult(
                        server=server.name,
                        subscribers=count,
                        regime=regime,
                        us_per_event=(cpu - baseline[regime]) / delivered * 1e6,
                        cpu_s=cpu,
                        baseline_cpu_s=baseline[regime],
                        delivered=delivered,
                        lost=sum(sample.lost for sample in samples),
                        extra=sum(sample.extra for sample in samples),
                        wall_s=statistics.median(sample.wall_s for sample in samples),
                        lag_s=max(sample.lag_s for sample in samples),
                        post_failures=publisher.failures,
                        other_cpu_s=sum(sample.other_cpu_s for sample in samples),
                    )
                )
        finally:
            group.close()
        await asyncio.sleep(1.0)  # the server notices the closed streams before the next round
    return results
