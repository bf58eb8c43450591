"""What ``bench.ingest`` posts and how it measures a window: the readings, the load generator, the figure.

The load generator is cheaper per request than any client library: each client is one keep-alive HTTP/1.1
connection on a raw asyncio stream, one request at a time, that reads only the status, the
``Content-Length`` and the body (bench/README.md, section 7). It drives the ingest service and the HTTP
ceiling alike: both take ``POST /v1/readings`` and answer ``202``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from bench.procs import INTERFERENCE, cpu_busy_s, pinned_cpu, proc_cpu_s

DEVICES = 10_000  # spread so that the per-device rate limit (on, at its default) never refuses a reading
READING = (
    '{"site":"plant1","device":"dev-%05d","metric":"temperature","value":21.53,"ts":"2026-11-27T07:00:00.000Z",'
    '"unit":"C","tags":{"room":"east","line":"3"},"id":"%s-%09d"}'
)


@dataclass(frozen=True)
class Workload:
    """Clients posting ``batch`` readings per request, one request at a time each."""

    name: str
    clients: int
    batch: int

    @property
    def in_flight(self) -> int:
        """Readings waiting for their acknowledgement when every client has a request out."""
        return self.clients * self.batch


@dataclass(frozen=True)
class Measure:
    """Readings acknowledged and CPU seconds of the measured process over one window; ``other_s``: CPU seconds of
    other work on its CPU meanwhile (other processes, interrupts; 0 when it may run on several CPUs)."""

    readings: int
    cpu_s: float
    wall_s: float
    other_s: float = 0.0

    @property
    def disturbed(self) -> bool:
        """Whether other work took enough of the CPU to disturb the figure (as bench.run notes it)."""
        return self.other_s > max(0.5, INTERFERENCE * self.cpu_s)

    @property
    def per_cpu_s(self) -> float:
        return self.readings / self.cpu_s if self.cpu_s > 0 else float("nan")

    @property
    def cpu_per_reading(self) -> float:
        """CPU seconds per reading acknowledged (infinite when none was)."""
        return self.cpu_s / self.readings if self.readings else math.inf


class Poster:
    """One client: posts bodies on one keep-alive connection, one request at a time, counting what is acknowledged.

    ``authorization``: the value of the ``Authorization`` header it sends (a token or API key; auth off: none).
    """

    def __init__(self, port: int, authorization: str | None = None) -> None:
        self.port = port
        self.head = b"POST /v1/readings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        if authorization is not None:
            self.head += b"Authorization: %s\r\n" % authorization.encode()
        self.acked = 0
        self.refused: dict[int, int] = {}

    async def run(self, bodies: Iterator[tuple[bytes, int]], stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            for body, count in bodies:
                if stop.is_set():
                    return
                writer.write(b"%sContent-Length: %d\r\n\r\n%s" % (self.head, len(body), body))
                status = int((await reader.readline()).split(b" ", 2)[1])
                length = 0
                while (line := await reader.readline()) != b"\r\n":
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                answer = await reader.readexactly(length)
                if status == 202 and b'"duplicate":true' not in answer:
                    self.acked += count
                else:
                    self.refused[status] = self.refused.get(status, 0) + 1
        finally:
            writer.close()


def bodies(workload: Workload, client: int, tag: str) -> Iterator[tuple[bytes, int]]:
    """The request bodies of one client, made as they are sent: realistic readings with ids unique over the run."""
    for request in itertools.count():
        first = (request * workload.clients + client) * workload.batch
        items = [READING % (n % DEVICES, tag, n) for n in range(first, first + workload.batch)]
        body = items[0] if workload.batch == 1 else "[" + ",".join(items) + "]"
        yield body.encode(), workload.batch


async def drive(
    port: int,
    pid: int,
    workload: Workload,
    warmup_s: float,
    duration_s: float,
    tag: str,
    credentials: Sequence[str] = (),
) -> Measure:
    """Run the workload against the server on ``port`` (the ingest service or the HTTP ceiling); measure the
    process ``pid`` over the window after warm-up.

    ``credentials``: one ``Authorization`` value per client when the service requires auth.
    """
    posters = [Poster(port, credentials[n] if credentials else None) for n in range(workload.clients)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(p.run(bodies(workload, n, tag), stop)) for n, p in enumerate(posters)]
    await asyncio.sleep(warmup_s)  # the warm-up is a span of time, not an event to wait for
    start = mark(sum(p.acked for p in posters), pid)
    await asyncio.sleep(duration_s)
    end = mark(sum(p.acked for p in posters), pid)
    stop.set()
    await asyncio.gather(*tasks)
    refused = sum((Counter(p.refused) for p in posters), Counter[int]())
    if refused:
        raise RuntimeError(f"{workload.name}: answers other than a clean 202: {dict(refused)}")
    return window(start, end)


@dataclass(frozen=True)
class Mark:
    """What a window's edge reads: readings acknowledged so far, the process's CPU, its CPU's busy time, the clock."""

    readings: int
    cpu_s: float
    busy_s: float | None
    wall_s: float


def mark(readings: int, pid: int) -> Mark:
    """One edge of a window, for the process ``pid``."""
    cpu = pinned_cpu(pid)
    busy = cpu_busy_s(cpu) if cpu is not None else None
    return Mark(readings, proc_cpu_s(pid), busy, time.monotonic())


def window(start: Mark, end: Mark) -> Measure:
    """The measure between two edges."""
    cpu_s = end.cpu_s - start.cpu_s
    other_s = 0.0
    if start.busy_s is not None and end.busy_s is not None:
        other_s = max(0.0, end.busy_s - start.busy_s - cpu_s)
    return Measure(end.readings - start.readings, cpu_s, end.wall_s - start.wall_s, other_s)
