"""Workload 6: stuck clients. Many SSE clients that never read, beside readers that do, while large readings flow.

Each stuck client opens its stream with a tiny receive buffer and never reads a byte, so whatever the
service sends it stays in the service (and in the kernel's buffers of its socket). The readers must get
every reading, in order; once the readings stop, every stuck stream must be gone (cut by the pending
budget while readings flow, or by the slow-consumer timeout after), and the stream process must not grow
past its pending budget by more than a stated margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import HttpClient, stream_request, wait_progress
from bench.storm import Resuming, StormProgress
from bench.targets import Server

STUCK_RECEIVE_BUFFER_BYTES = 4096
CONNECTING_AT_ONCE = 200
DEVICES = 1000  # topics the readings spread over
BATCH = 10
POSTERS = 4
TAG_VALUE_CHARS = 250
MAX_TAGS = 16  # what ingest accepts
SAMPLE_EVERY_S = 0.1
GONE_WITHIN_S = 120.0
STALL_S = 10.0


@dataclass
class StuckResult:
    """What the workload measured."""

    stuck: int
    readers: int
    readings: int
    reading_bytes: int  # the JSON of one reading as posted
    post_failures: int
    gaps: int  # stored readings a reader never got, summed over readers
    duplicates: int  # readings a reader got more than once
    disordered: int  # readers whose ids did not only grow
    ended: list[str]  # readers the server ended
    seconds_to_gone: float  # from the last reading's 202 until no stuck stream was left; < 0: before it
    traffic_s: float  # from the first POST to the last reading's 202
    still_open: int  # stuck streams left when the wait gave up
    rss_before_kb: int  # once every stream was open, before the first reading
    rss_peak_kb: int  # VmHWM at the end
    pending_peak_bytes: int  # telemetry_stream_pending_bytes, highest sample
    kernel_tcp_growth_kb: int  # /proc/net/sockstat TCP mem, highest sample minus the one before (system-wide)
    ended_reasons: dict[str, int] = field(default_factory=dict)
    server_cpu_s: float = 0.0


def reading(site: str, index: int, reading_bytes: int) -> dict[str, object]:
    """A reading of at least ``reading_bytes`` of JSON (a few more at most): tags carry the bulk."""
    tags: dict[str, str] = {}
    body = {"site": site, "device": f"d{index % DEVICES:04d}", "metric": "level", "value": float(index), "tags": tags}
    body["id"] = f"{index}"
    while (missing := reading_bytes - len(json.dumps(body, separators=(",", ":")))) > 0 and len(tags) < MAX_TAGS:
        tags[f"t{len(tags)}"] = "x" * min(TAG_VALUE_CHARS, max(1, missing - 8))
    return body


async def scrape(port: int) -> dict[str, float]:
    """The stream service's /metrics, as name (with labels) to value."""
    client = await HttpClient.open(port)
    try:
        client.writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        _status, body = await client.response()
    finally:
        await client.close()
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def kernel_tcp_kb() -> int:
    """Memory the kernel holds for TCP sockets, all of this machine's (``/proc/net/sockstat``, in pages)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * 4
    return 0


async def open_stuck(port: int, request: bytes, count: int) -> list[socket.socket]:
    """``count`` streams whose clients send the request and never read; at most CONNECTING_AT_ONCE connecting."""
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(CONNECTING_AT_ONCE)
    sockets: list[socket.socket] = []

    async def one() -> None:
        sock = socket.socket()
        sockets.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STUCK_RECEIVE_BUFFER_BYTES)  # before the handshake
        sock.setblocking(False)
        async with slots:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, request)

    try:
        await asyncio.gather(*(one() for _ in range(count)))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def post_paced(
    ingest_port: int, batches: Iterator[list[dict[str, object]]], rate_per_s: float
) -> tuple[list[int], int]:
    """POST the batches through ingest at ``rate_per_s`` readings a second, on POSTERS connections; the stored
    sequences, and how many readings were not stored."""
    seqs: list[int] = []
    failures = 0
    started, posted = time.perf_counter(), itertools.count()

    async def poster() -> None:
        nonlocal failures
        client = await HttpClient.open(ingest_port)
        try:
            for batch in batches:  # shared: each batch goes to whichever poster is free, when it is due
                await asyncio.sleep(max(0.0, started + next(posted) * BATCH / rate_per_s - time.perf_counter()))
                status, answer = await client.post("/v1/readings", json.dumps(batch, separators=(",", ":")).encode())
                if status == 202:
                    seqs.extend(result["seq"] for result in json.loads(answer)["results"])
                else:
                    failures += len(batch)
        finally:
            await client.close()

    await asyncio.gather(*(poster() for _ in range(POSTERS)))
    return sorted(seqs), failures


class Sampler:
    """The stream service's metrics and the kernel's TCP memory, sampled until stopped: the highest pending bytes and
    kernel memory, and when only ``readers`` streams were left open."""

    def __init__(self, port: int, readers: int) -> None:
        self.port = port
        self.readers = readers
        self.pending_peak = 0
        self.kernel_before = kernel_tcp_kb()
        self.kernel_peak = self.kernel_before
        self.only_readers_at: float | None = None  # perf_counter
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
                metrics = await scrape(self.port)
                self.pending_peak = max(self.pending_peak, int(metrics.get("telemetry_stream_pending_bytes", 0.0)))
                active = metrics.get("telemetry_stream_connections_active")
                if self.only_readers_at is None and active == self.readers:
                    self.only_readers_at = time.perf_counter()
            self.kernel_peak = max(self.kernel_peak, kernel_tcp_kb())
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def stop(self) -> None:
        """Stop sampling."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def wait_streams(port: int, open_streams: int, timeout_s: float) -> tuple[float, int]:
    """Poll until the service counts ``open_streams`` streams; when that was (perf_counter), and how many were left."""
    deadline = time.perf_counter() + timeout_s
    active = -1
    while time.perf_counter() < deadline:
        active = int((await scrape(port)).get("telemetry_stream_connections_active", -1))
        if active == open_streams:
            return time.perf_counter(), active
        await asyncio.sleep(SAMPLE_EVERY_S)
    return float("nan"), active


async def stuck(
    server: Server,
    ingest_port: int,
    *,
    clients: int,
    readers: int,
    readings: int,
    reading_bytes: int,
    rate_per_s: float,
) -> StuckResult:
    """``clients`` that never read and ``readers`` that do, on one site's ``>``; ``readings`` posted at
    ``rate_per_s``, then silence."""
    loop = asyncio.get_running_loop()
    site = f"stuck{int(time.time())}"
    request = stream_request(server.port, "/v1/stream", [f"{site}.>"])
    progress = StormProgress()
    members = [Resuming(request, 0, progress) for _ in range(readers)]
    sockets: list[socket.socket] = []
    sampler: Sampler | None = None
    try:
        await asyncio.gather(
            *(loop.create_connection(lambda m=member: m, "127.0.0.1", server.port) for member in members)  # type: ignore[misc]
        )
        sockets = await open_stuck(server.port, request, clients)
        _at, active = await wait_streams(server.port, clients + readers, STALL_S * 3)
        if active != clients + readers:
            raise RuntimeError(f"{active} of {clients + readers} streams open")
        rss_before, cpu_before = server.child.rss_kb(), server.child.cpu_s()
        sampler = Sampler(server.port, readers)
        traffic_started = time.perf_counter()
        items = (reading(site, index, reading_bytes) for index in range(readings))
        batches = iter(lambda: list(itertools.islice(items, BATCH)), [])
        seqs, failures = await post_paced(ingest_port, batches, rate_per_s)
        traffic_stopped = time.perf_counter()
        everything = asyncio.Event()

        def received() -> int:
            if progress.received >= readers * len(seqs):
                everything.set()
            return progress.received

        gone_at, still_active = sampler.only_readers_at, readers
        if gone_at is None:
            gone_at, still_active = await wait_streams(server.port, readers, GONE_WITHIN_S)
        await wait_progress(received, readers * len(seqs), everything, stall_s=STALL_S)
        await sampler.stop()
        metrics = await scrape(server.port)
        rss_peak, server_cpu_s = server.child.peak_rss_kb(), server.child.cpu_s() - cpu_before
        wanted = set(seqs)
        prefix = 'telemetry_stream_ended_connections_total{reason="'
        return StuckResult(
            stuck=clients,
            readers=readers,
            readings=readings,
            reading_bytes=len(json.dumps(reading(site, 0, reading_bytes), separators=(",", ":"))),
            post_failures=failures,
            gaps=sum(len(wanted - set(member.ids)) for member in members),
            duplicates=sum(len(member.ids) - len(set(member.ids)) for member in members),
            disordered=sum(1 for member in members if member.ids != sorted(set(member.ids))),
            ended=[member.ended for member in members if member.ended],
            seconds_to_gone=gone_at - traffic_stopped,
            traffic_s=traffic_stopped - traffic_started,
            still_open=max(0, still_active - readers),
            rss_before_kb=rss_before,
            rss_peak_kb=rss_peak,
            pending_peak_bytes=sampler.pending_peak,
            kernel_tcp_growth_kb=sampler.kernel_peak - sampler.kernel_before,
            ended_reasons={
                name.removeprefix(prefix).removesuffix('"}'): int(value)
                for name, value in metrics.items()
                if name.startswith(prefix) and value
            },
            server_cpu_s=server_cpu_s,
        )
    finally:
        if sampler is not None:
            await sampler.stop()
        progress.closing = True
        for member in members:
            if member.transport is not None:
                member.transport.close()
        for sock in sockets:
            sock.close()
