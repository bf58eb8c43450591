"""Workload 9: time to first paint, a dashboard opening on the latest reading of many topics or on minutes of history.

bench/README.md section 9 defines it. Readings are stored straight into JetStream in the stored format (as the
replay workload's are); then, on a fresh stream service, one client at a time opens the stream four ways:
``snapshot=latest`` on many topics, ``since=`` the time just before the history was stored, both together, and a
``Last-Event-ID`` resume of the same history (the replay rate the others stand beside). The clock runs from the
client's connect to its last expected event. The client counts frame markers like every other cheap client, and
keeps the bytes it read: once the clock has stopped, their ids are checked against the sequences JetStream
acknowledged, so a figure only counts when every expected reading arrived once, in order, and nothing else did.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import nats
from nats.js import JetStreamContext

from bench.load import Counting, Group, stream_request, wait_progress
from bench.procs import cpu_busy_s
from bench.report import Row, times
from bench.targets import Lab, Server
from core.readings import format_ts
from core.settings import Settings

SNAPSHOT_SITE, HISTORY_SITE = "paint", "hist"
SNAPSHOT_ROUNDS = 2  # readings per snapshot topic, so that the snapshot has to pick each one's latest
HISTORY_TOPICS = 100
HISTORY_RATE_PER_S = 100  # what the history stands for: --paint-history readings stored at this rate
LIVE_READINGS = 10  # published once a snapshot is painted: each must follow it once
IN_FLIGHT = 4000
STALL_S = 10.0
SETTLE_S = 0.2
# The runs last a fraction of a second: other work on the server CPU is worth a note from a few clock ticks on
# (the fan-out's floor of 0.5 s is for rounds of seconds).
OTHER_FLOOR_S = 0.05
ID_LINE = re.compile(rb"^id: (\d+)$", re.MULTILINE)
CONTROL_EVENT = re.compile(rb"^event: (reset|end)\ndata: (.*)$", re.MULTILINE)


@dataclass
class Paint:
    """One client's first paint: from its connect to its last expected event, and what was wrong with them."""

    events: int
    seconds: float
    first_s: float  # from its connect to its first event: when a page could start drawing
    server_cpu_s: float  # the stream service's, over the same span and a settle of SETTLE_S
    other_cpu_s: float  # what else ran on the server's CPU meanwhile (other processes, interrupts)
    problems: list[str]


@dataclass
class Variant:
    """One way of opening the stream, the sequences it must deliver in order, and its runs."""

    name: str  # short, for the notes
    label: str
    pattern: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    expected: list[int] = field(default_factory=list)
    runs: list[Paint] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Median time to first paint."""
        return statistics.median(run.seconds for run in self.runs) if self.runs else float("nan")

    @property
    def events_per_s(self) -> float:
        """Events painted per second, at the median time."""
        return len(self.expected) / self.seconds

    @property
    def cpu_us(self) -> float:
        """Median stream CPU per event painted."""
        return statistics.median(run.server_cpu_s / max(1, run.events) * 1e6 for run in self.runs)

    @property
    def ok(self) -> bool:
        """Every run got every expected event once, in order, and nothing else."""
        return bool(self.runs) and not any(run.problems for run in self.runs)


@dataclass
class PaintResult:
    """The four variants of one run, on ``topics`` snapshot topics and ``history`` readings of history."""

    topics: int
    history: int
    snapshot: Variant
    since: Variant
    both: Variant
    resume: Variant

    @property
    def variants(self) -> list[Variant]:
        """In the order they run within each repeat."""
        return [self.snapshot, self.since, self.both, self.resume]


class Recording(Counting):
    """A counting subscriber that also keeps the bytes it reads, for the check once the clock has stopped."""

    def __init__(self, group: Group, request: bytes, ready_marker: bytes, goal: int) -> None:
        super().__init__(group, request, ready_marker, lambda: None, goal)
        self.chunks: list[bytes] = []
        self.first_at = 0.0

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        super().data_received(data)
        if not self.first_at and self.count:
            self.first_at = time.perf_counter()


class Store:
    """Readings published straight into the services' JetStream stream, as ingest would store them."""

    def __init__(self, js: JetStreamContext) -> None:
        defaults = Settings.model_fields
        self.js = js
        self.stream, self.prefix = defaults["stream_name"].default, defaults["subject_prefix"].default
        self.received_at = format_ts(datetime.now(UTC))
        self.count = 0

    def reading(self, site: str, device: str, value: float) -> tuple[str, bytes]:
        """A topic and its stored payload, with an id unique to the run."""
        topic = f"{site}.{device}.temperature"
        self.count += 1
        payload = (
            f'{{"topic":"{topic}","device":"{device}","metric":"temperature","value":{value},"site":"{site}",'
            f'"unit":"C","id":"{site}-{self.count}","received_at":"{self.received_at}"}}'
        )
        return topic, payload.encode()

    async def publish(self, readings: Iterable[tuple[str, bytes]]) -> list[tuple[str, int]]:
        """Each reading's topic and stream sequence, in order, once JetStream has acknowledged them all."""
        topics, futures = [], []
        for topic, payload in readings:
            topics.append(topic)
            futures.append(await self.js.publish_async(f"{self.prefix}.{topic}", payload, stream=self.stream))
        acks = await asyncio.wait_for(asyncio.gather(*futures), 120.0)
        return [(topic, ack.seq) for topic, ack in zip(topics, acks, strict=True)]


async def paint(lab: Lab, topics: int, history: int, repeats: int, progress: Callable[[str], None]) -> PaintResult:
    """Store the readings, start a fresh stream service, and run the four variants ``repeats`` times, interleaved."""
    async with await nats.connect(lab.nats_url) as nc:
        store = Store(nc.jetstream(publish_async_max_pending=IN_FLIGHT))
        result, latest = await fill(store, topics, history)
        devices = [f"dev-{index:05d}" for index in range(0, topics, max(1, topics // LIVE_READINGS))][:LIVE_READINGS]

        async def publish_live() -> list[int]:
            acked = await store.publish(store.reading(SNAPSHOT_SITE, device, 3.0) for device in devices)
            latest.update(acked)  # the next snapshot's latest
            return [seq for _, seq in acked]

        server = await lab.start_stream()
        try:
            for repeat in range(1, repeats + 1):
                for variant in result.variants:
                    if variant is result.snapshot:
                        variant.expected = sorted(latest.values())
                    run = await first_paint(server, variant, publish_live if variant is result.snapshot else None)
                    variant.runs.append(run)
                    progress(
                        f"  {repeat}: {variant.label}: {run.seconds * 1e3:,.0f} ms, "
                        f"{run.server_cpu_s / max(1, run.events) * 1e6:.1f} µs/event of stream CPU"
                        + (f"; {'; '.join(run.problems)}" if run.problems else "")
                    )
        finally:
            lab.stop(server)
    return result


async def fill(store: Store, topics: int, history: int) -> tuple[PaintResult, dict[str, int]]:
    """Store what the variants read: each snapshot topic SNAPSHOT_ROUNDS times, one reading of each history topic,
    the time, then the history. Returns the variants with the sequences they must deliver, and each snapshot
    topic's latest sequence."""
    snapshot = [f"dev-{index:05d}" for index in range(topics)]
    rounds = (store.reading(SNAPSHOT_SITE, device, 1.0 + n) for n in range(SNAPSHOT_ROUNDS) for device in snapshot)
    latest = dict(await store.publish(rounds))  # the last round's sequences win
    devices = [f"dev-{index:03d}" for index in range(HISTORY_TOPICS)]
    before = [seq for _, seq in await store.publish(store.reading(HISTORY_SITE, d, 20.0) for d in devices)]
    since = format_ts(datetime.now(UTC))  # once the readings before it are stored, just before the history
    window = (store.reading(HISTORY_SITE, devices[i % HISTORY_TOPICS], 21.0 + i % 7) for i in range(history))
    stored = [seq for _, seq in await store.publish(window)]
    minutes = history / HISTORY_RATE_PER_S / 60
    result = PaintResult(
        topics,
        history,
        snapshot=Variant(
            "snapshot", f"snapshot=latest, {topics:,} topics", f"{SNAPSHOT_SITE}.>", {"snapshot": "latest"}
        ),
        since=Variant(
            "since",
            f"since=, {history:,} readings ({minutes:g} min at {HISTORY_RATE_PER_S}/s)",
            f"{HISTORY_SITE}.>",
            {"since": since},
            expected=stored,
        ),
        both=Variant(
            "snapshot+since",
            f"snapshot=latest&since=, {HISTORY_TOPICS} topics + {history:,} readings",
            f"{HISTORY_SITE}.>",
            {"snapshot": "latest", "since": since},
            expected=before + stored,
        ),
        resume=Variant(
            "resume",
            f"Last-Event-ID, the same {history:,} readings",
            f"{HISTORY_SITE}.>",
            headers={"Last-Event-ID": str(stored[0] - 1)},
            expected=stored,
        ),
    )
    return result, latest


async def first_paint(server: Server, variant: Variant, after: Callable[[], Awaitable[list[int]]] | None) -> Paint:
    """One client: connect, count until it has every expected event (the clock), then what ``after`` stores (the
    sequences it returns must follow), then check every id it read."""
    loop = asyncio.get_running_loop()
    request = stream_request(server.port, "/v1/stream", [variant.pattern], variant.headers, variant.params)
    expected = variant.expected
    group = Group()
    group.expected = 1
    cpu_before, busy_before = server.child.cpu_s(), cpu_busy_s(server.cpu)
    started = time.perf_counter()
    _transport, client = await loop.create_connection(
        lambda: Recording(group, request, server.ready_marker, len(expected)), "127.0.0.1", server.port
    )
    group.members.append(client)
    try:
        await wait_progress(group.total, len(expected), group.all_reached, stall_s=STALL_S)
        finished = client.reached_at if client.reached else time.perf_counter()
        await asyncio.sleep(SETTLE_S)  # what the service still does for it (the consumer's deletion) counts too
        cpu = server.child.cpu_s() - cpu_before
        other = cpu_busy_s(server.cpu) - busy_before - cpu
        more = await after() if after is not None and client.reached else []
        if more:
            await group.wait_received(len(expected) + len(more), STALL_S)
            await asyncio.sleep(SETTLE_S)  # time for one too many to show
        problems = check(b"".join(client.chunks), expected + more) + group.failed + group.dropped
    finally:
        group.close()
    first = (client.first_at or finished) - started
    return Paint(min(client.count, len(expected)), finished - started, first, cpu, other, problems)


def check(raw: bytes, expected: list[int]) -> list[str]:
    """What is wrong with the events a client read, against the stream sequences it should have got, in order."""
    body = sse_body(raw)
    ids = [int(found) for found in ID_LINE.findall(body)]
    problems = [
        f"event: {name.decode()} {data.decode(errors='replace')[:200]}" for name, data in CONTROL_EVENT.findall(body)
    ]
    if ids != expected:
        got, wanted = set(ids), set(expected)
        increasing = all(earlier < later for earlier, later in itertools.pairwise(ids))
        problems.append(
            f"{len(ids)} events for {len(expected)}: {len(wanted - got)} missing, {len(ids) - len(got)} doubled, "
            f"{len(got - wanted)} not expected" + ("" if increasing else ", ids not increasing")
        )
    return problems


def sse_body(raw: bytes) -> bytes:
    """The event stream in an HTTP/1.1 response as read off the socket, its chunked framing taken off."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return rest
    parts, at = [], 0
    while (line_end := rest.find(b"\r\n", at)) >= 0:
        size = int(rest[at:line_end].split(b";", 1)[0], 16)
        start = line_end + 2
        if size == 0 or start + size > len(rest):
            parts.append(rest[start : start + size])
            break
        parts.append(rest[start : start + size])
        at = start + size + 2
    return b"".join(parts)


def paint_rows(result: PaintResult, ceiling: str) -> list[Row]:
    """Each variant's median time to first paint; beside the resume's rate, or the ceiling's cost for the resume."""
    resume = result.resume
    rows = []
    for variant in result.variants:
        per_event, resume_per_event = variant.seconds / len(variant.expected), resume.seconds / len(resume.expected)
        target = "latest of each once, then live" if variant is result.snapshot else "each once, in order"
        rows.append(
            Row(
                f"first paint, {variant.label}",
                f"{variant.seconds * 1e3:,.0f} ms ({variant.events_per_s:,.0f} events/s, {variant.cpu_us:.1f} µs CPU)",
                ceiling if variant is resume else f"resume {resume.events_per_s:,.0f} events/s",
                "" if variant is resume else times(per_event, resume_per_event),
                target,
                variant.ok,
            )
        )
    return rows


def paint_notes(result: PaintResult, server_cpu: int, interference: float) -> list[str]:
    """Every run's figure, the stream CPU per event, what went wrong, and runs other work may have disturbed."""
    runs = "; ".join(
        f"{variant.name} "
        + " / ".join(
            f"{run.seconds * 1e3:,.0f} ms (first {run.first_s * 1e3:,.0f}) "
            f"{run.server_cpu_s / max(1, run.events) * 1e6:.1f} µs"
            for run in variant.runs
        )
        for variant in result.variants
    )
    notes = [
        f"first paint, each run: ms to the last event (to the first), stream CPU per event: {runs}. Ratio: time per "
        f"event over the resume's; the history stands for {result.history / HISTORY_RATE_PER_S / 60:g} min at "
        f"{HISTORY_RATE_PER_S}/s, stored at once"
    ]
    problems = sorted({problem for variant in result.variants for run in variant.runs for problem in run.problems})
    if problems:
        notes.append(f"first paint: {len(problems)} kinds of problem, e.g. {problems[0]}")
    disturbed = [
        f"{variant.name} {other:.2f} s"
        for variant in result.variants
        if (other := sum(run.other_cpu_s for run in variant.runs))
        > max(OTHER_FLOOR_S, interference * sum(run.server_cpu_s for run in variant.runs))
    ]
    if disturbed:
        notes.append(
            f"first paint: CPU {server_cpu} also ran other work (interrupts, or processes this run did not start) "
            "during: " + ", ".join(disturbed) + "; figures may be disturbed"
        )
    return notes
