"""Workloads 2-4: idle memory per connection, end-to-end latency, and resume replay rate."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import nats

from bench.load import HttpClient, Latency, open_group, stream_request, wait_progress
from bench.procs import proc_cpu_s
from bench.targets import Server

IDLE_PATTERN = "idle.>"
REPLAY_PATTERN = "replay.>"
WARMUP_CONNECTIONS = 100
STALL_S = 10.0


@dataclass
class MemoryResult:
    """RSS growth of one server with idle SSE connections open."""

    server: str
    connections: int
    rss_before_kb: int
    rss_after_kb: int

    @property
    def kb_per_connection(self) -> float:
        """VmRSS growth (KiB) per open connection."""
        return (self.rss_after_kb - self.rss_before_kb) / self.connections


async def idle_memory(server: Server, connections: int, hold_s: float) -> MemoryResult:
    """Open ``connections`` streams on a pattern that gets nothing; RSS before and ``hold_s`` after the last."""
    request = stream_request(server.port, "/v1/stream", [IDLE_PATTERN])
    warmup = await open_group(server.port, request, WARMUP_CONNECTIONS, ready_marker=server.ready_marker)
    warmup.close()  # first connections pay for lazy imports and caches, not for being open
    await asyncio.sleep(1.0)
    before = server.child.rss_kb()
    group = await open_group(server.port, request, connections, ready_marker=server.ready_marker)
    try:
        await server.confirm(connections)
        await asyncio.sleep(hold_s)
        after = server.child.rss_kb()
    finally:
        group.close()
    return MemoryResult(server.name, connections, before, after)


@dataclass
class LatencyResult:
    """End-to-end latency of the measured window."""

    readings_posted: int
    post_failures: int
    deliveries: int
    expected: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    post_p50_ms: float  # the ingest's share: POST to 202
    post_p99_ms: float
    busy: dict[str, float]  # share of one CPU each watched process used during the run

    @property
    def lost(self) -> int:
        """Events that never arrived (or arrived twice when negative)."""
        return self.expected - self.deliveries


def quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted values."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def latency(
    server: Server,
    ingest_port: int,
    *,
    sites: int,
    devices_per_site: int,
    subscribers_per_site: int,
    rate_per_device: float,
    warmup_s: float,
    duration_s: float,
    watch_pids: dict[str, int],
) -> LatencyResult:
    """Devices post through ingest at a steady rate; subscribers per site measure POST-to-read latency."""
    loop = asyncio.get_running_loop()
    start = time.time() + 1.0
    window = (start + warmup_s, start + warmup_s + duration_s)
    subscribers: list[tuple[int, Latency]] = []
    connects = []
    for site in range(sites):
        request = stream_request(server.port, "/v1/stream", [f"site{site}.>"])
        for _ in range(subscribers_per_site):
            connected: asyncio.Future[None] = loop.create_future()
            protocol = Latency(request, window, connected)
            await loop.create_connection(lambda protocol=protocol: protocol, "127.0.0.1", server.port)  # type: ignore[misc]
            subscribers.append((site, protocol))
            connects.append(connected)
    await asyncio.wait_for(asyncio.gather(*connects), 60.0)
    posted = [0] * sites
    round_trips: list[float] = []
    failures = 0
    interval_s = 1.0 / (rate_per_device * devices_per_site)  # one site's devices take turns
    readings_per_s = rate_per_device * devices_per_site * sites

    async def site_devices(site: int) -> None:
        nonlocal failures
        client = await HttpClient.open(ingest_port)
        offset = site / readings_per_s  # spreads the sites evenly over each interval
        try:
            for turn in range(int((warmup_s + duration_s) / interval_s)):
                due = start + offset + turn * interval_s
                await asyncio.sleep(max(0.0, due - time.time()))
                device = f"s{site}-d{turn % devices_per_site}"
                sent = time.time()
                body = {
                    "site": f"site{site}",
                    "device": device,
                    "metric": "temperature",
                    "value": 21.5,
                    "unit": "C",
                    "tags": {"sent": f"{sent:.6f}"},
                    "id": f"{device}-{turn}",
                }
                status, _ = await client.post("/v1/readings", json.dumps(body, separators=(",", ":")).encode())
                if status != 202:
                    failures += 1
                elif window[0] <= sent < window[1]:
                    posted[site] += 1
                    round_trips.append(time.time() - sent)
        finally:
            await client.close()

    load_before = {name: proc_cpu_s(pid) for name, pid in watch_pids.items()}
    await asyncio.gather(*(site_devices(site) for site in range(sites)))
    elapsed = time.time() - start
    busy = {name: (proc_cpu_s(pid) - load_before[name]) / elapsed for name, pid in watch_pids.items()}
    expected = sum(posted[site] for site, _ in subscribers)

    def received() -> int:
        return sum(len(protocol.latencies_s) for _, protocol in subscribers)

    await wait_progress(received, expected, asyncio.Event(), stall_s=2.0)
    for _, protocol in subscribers:
        if protocol.transport is not None:
            protocol.transport.close()
    ordered = sorted(value for _, protocol in subscribers for value in protocol.latencies_s)
    return LatencyResult(
        readings_posted=sum(posted),
        post_failures=failures,
        deliveries=len(ordered),
        expected=expected,
        p50_ms=quantile(ordered, 0.50) * 1e3,
        p99_ms=quantile(ordered, 0.99) * 1e3,
        max_ms=(ordered[-1] if ordered else float("nan")) * 1e3,
        post_p50_ms=quantile(sorted(round_trips), 0.50) * 1e3,
        post_p99_ms=quantile(sorted(round_trips), 0.99) * 1e3,
        busy=busy,
    )


@dataclass
class ReplayResult:
    """One resumed client reading the whole history."""

    events: int
    received: int
    seconds: float
    server_cpu_s: float

    @property
    def events_per_s(self) -> float:
        """Replay rate."""
        return self.received / self.seconds


async def fill_history(nats_url: str, stream: str, subject_prefix: str, count: int) -> int:
    """Publish ``count`` stored-format readings straight to JetStream; returns the first one's sequence."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream(publish_async_max_pending=4000)
        first = 0
        for index in range(count):
            topic = f"replay.dev-{index % 100:03d}.temperature"
            payload = (
                f'{{"topic":"{topic}","device":"dev-{index % 100:03d}","metric":"temperature","value":21.5,'
                f'"site":"replay","unit":"C","id":"replay-{index}","received_at":"2026-11-27T07:00:00.123456Z"}}'
            ).encode()
            future = await js.publish_async(f"{subject_prefix}.{topic}", payload, stream=stream)
            if index == 0:
                first = (await future).seq
        await asyncio.wait_for(js.publish_async_completed(), 120.0)
        return first
    finally:
        await nc.close()


async def replay(server: Server, first_seq: int, count: int) -> ReplayResult:
    """One client resumes from just before ``first_seq`` and reads until it has ``count`` events."""
    request = stream_request(server.port, "/v1/stream", [REPLAY_PATTERN], {"Last-Event-ID": str(first_seq - 1)})
    cpu_before = server.child.cpu_s()
    started = time.perf_counter()
    group = await open_group(server.port, request, 1, ready_marker=server.ready_marker, goal=count)
    try:
        await wait_progress(group.total, count, group.all_reached, stall_s=STALL_S)
        finished = group.members[0].reached_at if group.all_reached.is_set() else time.perf_counter()
        await asyncio.sleep(0.2)
        return ReplayResult(count, group.total(), finished - started, server.child.cpu_s() - cpu_before)
    finally:
        group.close()
