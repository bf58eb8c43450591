"""Workload 4b: a reconnect storm. Many clients resume at the same moment while readings keep arriving.

Each client reads the ids of its events (``id: N``), so the run can tell exactly which stored
readings a client missed or got twice. A client is live once it got a reading posted after the
storm began: the replay of what it missed is behind it then.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import cast

from bench.load import HttpClient, stream_request, wait_progress
from bench.targets import Server

ID_MARKER = b"\nid: "


class Resuming(asyncio.Protocol):
    """One resuming SSE client: the ids it got, in order, and when it first got a live one."""

    def __init__(self, request: bytes, live_after_seq: int, progress: StormProgress) -> None:
        self.request = request
        self.live_after_seq = live_after_seq
        self.progress = progress
        self.transport: asyncio.Transport | None = None
        self.rest = b""
        self.ids: list[int] = []
        self.live_at = 0.0
        self.ended = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.rest + data
        pos, before = 0, len(self.ids)
        while True:
            at = buf.find(ID_MARKER, pos)
            end = buf.find(b"\n", at + len(ID_MARKER)) if at >= 0 else -1
            if end < 0:
                keep = at if at >= 0 else max(pos, len(buf) - len(ID_MARKER) + 1)
                self.rest = buf[keep:]
                break
            self.ids.append(int(buf[at + len(ID_MARKER) : end]))
            pos = end
        if len(self.ids) > before:
            if not self.live_at and self.ids[-1] > self.live_after_seq:
                self.live_at = time.perf_counter()
                self.progress.live += 1
            self.progress.received += len(self.ids) - before

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.progress.closing:
            self.ended = f"ended by the server: {exc or 'EOF'}, last bytes {self.rest[-80:]!r}"


@dataclass
class StormProgress:
    """Counters the wait loops watch."""

    live: int = 0
    received: int = 0
    closing: bool = False


@dataclass
class StormResult:
    """What the storm measured."""

    clients: int
    history: int
    posted: int
    seconds_to_live: float  # from the storm's start until the last client was live
    not_live: int
    post_failures: int
    gaps: int  # stored readings some client never got, summed over clients
    duplicates: int  # events a client got more than once, summed over clients
    disordered: int  # clients whose ids did not only grow
    ended: list[str]
    server_cpu_s: float


async def post_history(ingest_port: int, site: str, count: int) -> list[int]:
    """Store ``count`` readings on ``site`` through ingest, in batches of 100; returns their sequences."""
    client = await HttpClient.open(ingest_port)
    seqs: list[int] = []
    try:
        for first in range(0, count, 100):
            batch = [
                {"site": site, "device": f"d{index % 10}", "metric": "level", "value": float(index)}
                for index in range(first, min(count, first + 100))
            ]
            status, answer = await client.post("/v1/readings", json.dumps(batch).encode())
            if status != 202:
                raise RuntimeError(f"storing the history failed: {status} {answer[:200]!r}")
            seqs += [result["seq"] for result in json.loads(answer)["results"]]
    finally:
        await client.close()
    return seqs


async def post_steadily(ingest_port: int, site: str, rate_per_s: float, stop: asyncio.Event, seqs: list[int]) -> int:
    """POST one reading at a time at ``rate_per_s`` until ``stop``; the stored sequences go to ``seqs``."""
    client = await HttpClient.open(ingest_port)
    failures, turn, start = 0, 0, time.perf_counter()
    try:
        while not stop.is_set():
            body = {"site": site, "device": f"d{turn % 10}", "metric": "level", "value": float(turn)}
            status, answer = await client.post("/v1/readings", json.dumps(body).encode())
            if status == 202:
                seqs.append(json.loads(answer)["results"][0]["seq"])
            else:
                failures += 1
            turn += 1
            await asyncio.sleep(max(0.0, start + turn / rate_per_s - time.perf_counter()))
    finally:
        await client.close()
    return failures


async def storm(
    server: Server,
    ingest_port: int,
    site: str,
    history_seqs: list[int],
    *,
    clients: int,
    rate_per_s: float,
    settle_s: float,
) -> StormResult:
    """``clients`` on ``site.>`` connect at once with ``Last-Event-ID`` just before ``history_seqs``, while
    readings keep arriving at ``rate_per_s``, and for ``settle_s`` after the last one is live."""
    loop = asyncio.get_running_loop()
    request = stream_request(server.port, "/v1/stream", [f"{site}.>"], {"Last-Event-ID": str(history_seqs[0] - 1)})
    progress = StormProgress()
    posted: list[int] = []
    stop_posting = asyncio.Event()
    cpu_before = server.child.cpu_s()
    started = time.perf_counter()
    poster = asyncio.create_task(post_steadily(ingest_port, site, rate_per_s, stop_posting, posted))
    members = [Resuming(request, history_seqs[-1], progress) for _ in range(clients)]
    await asyncio.gather(
        *(loop.create_connection(lambda m=member: m, "127.0.0.1", server.port) for member in members)  # type: ignore[misc]
    )
    all_live = asyncio.Event()

    def live() -> int:
        if progress.live >= clients:
            all_live.set()
        return progress.live

    try:
        await wait_progress(live, clients, all_live, stall_s=10.0)
        seconds_to_live = max((m.live_at for m in members), default=started) - started
        await asyncio.sleep(settle_s)  # live traffic after everyone caught up: the hand-over must hold
        stop_posting.set()
        failures = await poster
        expected = history_seqs + sorted(posted)
        everything = asyncio.Event()

        def received() -> int:
            if progress.received >= clients * len(expected):
                everything.set()
            return progress.received

        await wait_progress(received, clients * len(expected), everything, stall_s=5.0)
        server_cpu_s = server.child.cpu_s() - cpu_before
    finally:
        progress.closing = True
        stop_posting.set()
        for member in members:
            if member.transport is not None:
                member.transport.close()
    wanted = set(expected)
    gaps = sum(len(wanted - set(member.ids)) for member in members)
    return StormResult(
        clients=clients,
        history=len(history_seqs),
        posted=len(posted),
        post_failures=failures,
        seconds_to_live=seconds_to_live,
        not_live=clients - progress.live,
        gaps=gaps,
        duplicates=sum(len(member.ids) - len(set(member.ids)) for member in members),
        disordered=sum(1 for member in members if member.ids != sorted(set(member.ids))),
        ended=[member.ended for member in members if member.ended],
        server_cpu_s=server_cpu_s,
    )
