"""Workload 11: the stream tier scaled out. Four stream processes, each serving the dashboards of a quarter of the
sites: what each receives from JetStream, what it delivers and the CPU it spends, with the live feed on the whole
stream against one that follows the dashboards' interest.

bench/README.md section 11 defines it. Readings are POSTed through the ingest service in batches of one site each
(``bench.stuck.post_paced``), the dashboards are counting clients (``bench.load``), and what a process received is its
own counter, ``telemetry_stream_upstream_messages_total``, read from its ``/metrics`` at the window's edges, beside
the readings JetStream stored meanwhile (its stream's last sequence).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import nats
from nats.js import JetStreamContext

from bench.load import Group, open_group, stream_request, wait_progress
from bench.procs import cpu_busy_s, proc_cpu_s
from bench.report import Row, times
from bench.stuck import BATCH, post_paced, scrape
from bench.targets import Lab, Server
from core.settings import Settings

PROCESSES = 4  # site n is served by process n % PROCESSES
OWN_SHARE = 1 / PROCESSES  # of the readings, those for the sites one process serves
SHARE_TARGET = 1.10  # what a process may receive, over the readings of the sites it serves
# The setting that selects the live feed's design (issue 16): at most this many filter subjects on the live consumer.
# 1: a process serving several sites consumes the whole stream, as before issue 16; unset: its default, by interest.
MAX_FILTERS = "live_feed_max_filters"
DESIGNS = {"whole": "whole stream", "interest": "interest"}
DESIGN_SETTINGS = {"whole": {MAX_FILTERS: "1"}, "interest": {}}
UPSTREAM = "telemetry_stream_upstream_messages_total"
DELIVERED = "telemetry_stream_events_sent_total"
TAIL_S = 0.5  # posting goes on this long after the window, so that the window ends in steady traffic
STALL_S = 5.0


def site_name(index: int) -> str:
    """The site of index ``index``, a topic's first token; dashboards follow ``<site>.>``."""
    return f"scale{index}"


@dataclass
class Edge:
    """What one edge of the window reads, per process and overall."""

    stored: int  # the stream's last sequence
    received: list[int]  # per process: its upstream messages counter
    delivered: list[int]  # per process: its events-sent counter
    cpu_s: list[float]  # per process
    server_busy_s: float  # the server CPU's busy time (every process on it, interrupts)
    load_cpu_s: float  # the load side's processes': this one, ingest and nats-server
    wall_s: float


@dataclass
class Run:
    """One design measured once: four fresh stream processes over one window, and the deliveries of the whole run."""

    design: str
    seconds: float
    stored: int  # readings stored in the window
    received: list[int]  # per process, in the window
    delivered: list[int]  # per process, in the window
    cpu_s: list[float]  # per process, in the window
    other_cpu_s: float  # other work on the server CPU in the window
    load_busy: float  # CPU seconds per second of the load side's processes in the window
    posted: int  # readings stored over the run (warm-up, window, tail)
    post_failures: int
    expected: int  # deliveries over the run: each reading to every dashboard of its site
    lost: int
    extra: int

    @property
    def shares(self) -> list[float]:
        """Per process: what it received, as a share of every reading stored in the window."""
        return [received / self.stored if self.stored else math.nan for received in self.received]

    @property
    def cpu_per_s(self) -> list[float]:
        """Per process: CPU seconds per second of the window."""
        return [cpu / self.seconds for cpu in self.cpu_s]

    @property
    def delivered_ok(self) -> bool:
        """Every reading stored, and delivered once to every dashboard of its site."""
        return self.post_failures == 0 and self.lost == 0 and self.extra == 0


@dataclass
class ScaleoutResult:
    """Every run of both designs, in the order measured."""

    sites: int
    dashboards_per_site: int
    rate_per_s: float
    runs: dict[str, list[Run]] = field(default_factory=lambda: {design: [] for design in DESIGNS})

    def max_share(self, design: str) -> float:
        """The most any process of any run of ``design`` received, as a share of the readings."""
        return max((share for run in self.runs[design] for share in run.shares), default=math.nan)

    def mean_share(self, design: str) -> float:
        """The mean over processes and runs of ``design``."""
        shares = [share for run in self.runs[design] for share in run.shares]
        return statistics.mean(shares) if shares else math.nan

    def cpu_per_s(self, design: str) -> float:
        """The median over runs of a process's mean CPU seconds per second."""
        runs = self.runs[design]
        return statistics.median(statistics.mean(run.cpu_per_s) for run in runs) if runs else math.nan


async def scaleout(
    lab: Lab,
    *,
    sites: int,
    dashboards_per_site: int,
    rate_per_s: float,
    warmup_s: float,
    seconds: float,
    rounds: int,
    load_pids: list[int],
    progress: Callable[[str], None],
) -> ScaleoutResult:
    """``rounds`` rounds of both designs, each round starting with the other one, each run on fresh processes."""
    result = ScaleoutResult(sites, dashboards_per_site, rate_per_s)
    stream_name = Settings.model_fields["stream_name"].default
    nc = await nats.connect(lab.nats_url)
    try:
        designs = list(DESIGNS)
        for number in range(rounds):
            for design in designs[number % 2 :] + designs[: number % 2]:
                progress(f"scale-out: round {number + 1} of {rounds}, {DESIGNS[design]} ...")
                run = await measure(lab, nc.jetstream(), stream_name, design, result, warmup_s, seconds, load_pids)
                result.runs[design].append(run)
                progress(
                    "  received "
                    + " / ".join(f"{share:.1%}" for share in run.shares)
                    + ", CPU "
                    + " / ".join(f"{cpu:.3f}" for cpu in run.cpu_per_s)
                    + f" s/s; {run.lost} lost, {run.extra} extra of {run.expected:,} deliveries"
                )
    finally:
        await nc.close()
    return result


async def measure(
    lab: Lab,
    js: JetStreamContext,
    stream_name: str,
    design: str,
    result: ScaleoutResult,
    warmup_s: float,
    seconds: float,
    load_pids: list[int],
) -> Run:
    """One run of ``design`` with the sizes of ``result``: fresh processes, their dashboards, then readings posted
    through the warm-up, the window and a tail."""
    servers: list[Server] = []
    groups: list[Group] = []
    poster: asyncio.Task[tuple[list[int], int]] | None = None
    try:
        for number in range(PROCESSES):
            name = f"stream-{design}-{number}"
            servers.append(await lab.start_stream(DESIGN_SETTINGS[design], name=name))
        groups = await open_dashboards(servers, result.sites, result.dashboards_per_site)
        total = math.ceil(result.rate_per_s * (warmup_s + seconds + TAIL_S) / BATCH)
        for site, group in enumerate(groups):
            group.arm(BATCH * len(range(site, total, result.sites)))  # batch n is for site n % sites
        poster = asyncio.create_task(post_paced(lab.ingest_port, batches(result.sites, total), result.rate_per_s))
        await asyncio.sleep(warmup_s)  # the warm-up and the window are spans of time, not events to wait for
        start = await edge(servers, js, stream_name, load_pids)
        await asyncio.sleep(seconds)
        end = await edge(servers, js, stream_name, load_pids)
        seqs, failures = await poster
        expected = sum(member.goal for group in groups for member in group.members)
        await wait_progress(lambda: sum(group.received for group in groups), expected, asyncio.Event(), stall_s=STALL_S)
        cpu_s = [after - before for before, after in zip(start.cpu_s, end.cpu_s, strict=True)]
        return Run(
            design=design,
            seconds=end.wall_s - start.wall_s,
            stored=end.stored - start.stored,
            received=[after - before for before, after in zip(start.received, end.received, strict=True)],
            delivered=[after - before for before, after in zip(start.delivered, end.delivered, strict=True)],
            cpu_s=cpu_s,
            other_cpu_s=max(0.0, end.server_busy_s - start.server_busy_s - sum(cpu_s)),
            load_busy=(end.load_cpu_s - start.load_cpu_s) / (end.wall_s - start.wall_s),
            posted=len(seqs),
            post_failures=failures,
            expected=expected,
            lost=sum(group.missing() for group in groups),
            extra=sum(group.extra() for group in groups),
        )
    finally:
        if poster is not None and not poster.done():
            poster.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poster
        for group in groups:
            group.close()
        for server in servers:
            lab.stop(server)


async def open_dashboards(servers: list[Server], sites: int, per_site: int) -> list[Group]:
    """Per site, ``per_site`` dashboards on ``<site>.>``, at the process that serves it; once all are connected."""
    opening = []
    for site in range(sites):
        server = servers[site % PROCESSES]
        request = stream_request(server.port, "/v1/stream", [f"{site_name(site)}.>"])
        opening.append(open_group(server.port, request, per_site, ready_marker=server.ready_marker))
    opened = await asyncio.gather(*opening, return_exceptions=True)
    groups = [group for group in opened if isinstance(group, Group)]
    failed = [error for error in opened if isinstance(error, BaseException)]
    if failed:
        for group in groups:
            group.close()
        raise failed[0]
    return groups


def batches(sites: int, total: int) -> Iterator[list[dict[str, object]]]:
    """``total`` POST bodies of BATCH readings, batch n for site n % sites: one reading of each of its devices."""
    for number in range(total):
        site = site_name(number % sites)
        yield [
            {"site": site, "device": f"d{device}", "metric": "temperature", "value": 21.5, "unit": "C"}
            for device in range(BATCH)
        ]


async def edge(servers: list[Server], js: JetStreamContext, stream_name: str, load_pids: list[int]) -> Edge:
    """Read every counter of one edge of the window, as close together as the reads allow."""
    scraped, info = await asyncio.gather(
        asyncio.gather(*(scrape(server.port) for server in servers)), js.stream_info(stream_name)
    )
    return Edge(
        stored=info.state.last_seq,
        received=[int(metrics[UPSTREAM]) for metrics in scraped],
        delivered=[int(metrics[DELIVERED]) for metrics in scraped],
        cpu_s=[server.child.cpu_s() for server in servers],
        server_busy_s=cpu_busy_s(servers[0].cpu),
        load_cpu_s=sum(proc_cpu_s(pid) for pid in load_pids),
        wall_s=time.monotonic(),
    )


def scaleout_rows(result: ScaleoutResult) -> list[Row]:
    """Per design what a process received and its CPU, and whether every dashboard got its site's readings; the
    interest design's received share is the goal (issue 16), its CPU set against the whole stream's."""
    label = f"scale-out, {PROCESSES} stream procs, {result.sites} sites, {result.rate_per_s:,.0f} rdg/s"
    whole_cpu = result.cpu_per_s("whole")
    rows = []
    for design, name in DESIGNS.items():
        runs = result.runs[design]
        if not runs:
            continue
        most = result.max_share(design)
        received = Row(
            f"{label}: {name}, received per proc",
            f"max {most:.1%}, mean {result.mean_share(design):.1%} of readings",
            f"own sites {OWN_SHARE:.1%}",
            times(most, OWN_SHARE),
        )
        if design == "interest":
            received.target = f"≤ {SHARE_TARGET:.2f}x own sites"
            received.ok = most <= SHARE_TARGET * OWN_SHARE
        cpu = result.cpu_per_s(design)
        most_cpu = max(value for run in runs for value in run.cpu_per_s)
        delivered = sum(sum(run.delivered) for run in runs)
        rows += [
            received,
            Row(
                f"{label}: {name}, CPU per proc",
                f"{cpu:.3f} CPU s/s (max {most_cpu:.3f})",
                "" if design == "whole" else f"whole stream {whole_cpu:.3f}",
                "" if design == "whole" else times(cpu, whole_cpu),
            ),
            Row(
                f"{label}: {name}, deliveries",
                f"{sum(run.lost for run in runs)} lost, {sum(run.extra for run in runs)} extra",
                f"{sum(run.expected for run in runs):,} expected; {delivered:,} in the windows",
                "",
                "= 0",
                all(run.delivered_ok for run in runs),
            ),
        ]
    return rows


def scaleout_notes(result: ScaleoutResult, server_cpu: int, interference: float, load_saturated: float) -> list[str]:
    """Every run per process, and runs the machine may have disturbed."""
    notes = []
    for design, name in DESIGNS.items():
        for number, run in enumerate(result.runs[design], 1):
            processes = "; ".join(
                f"{share:.1%} received, {delivered:,} events, {cpu:.3f} CPU s/s"
                for share, delivered, cpu in zip(run.shares, run.delivered, run.cpu_per_s, strict=True)
            )
            notes.append(
                f"scale-out {name}, run {number}: {run.stored:,} readings in {run.seconds:.1f} s "
                f"({run.stored / run.seconds:,.0f}/s); per process {processes}; {run.posted:,} readings posted "
                f"({run.post_failures} failed); the load side used {run.load_busy:.0%} of its CPU"
            )
    disturbed = [
        f"{DESIGNS[run.design]} {run.other_cpu_s:.1f} s"
        for runs in result.runs.values()
        for run in runs
        if run.other_cpu_s > max(0.5, interference * sum(run.cpu_s))
    ]
    if disturbed:
        notes.append(
            f"scale-out: CPU {server_cpu} also ran other work (interrupts, or processes this run did not start) "
            "during: " + ", ".join(disturbed) + "; figures may be disturbed"
        )
    saturated = [run for runs in result.runs.values() for run in runs if run.load_busy > load_saturated]
    if saturated:
        notes.append(
            f"scale-out: the load side (load generator, ingest, nats-server) used more than {load_saturated:.0%} of "
            f"its CPU in {len(saturated)} runs: the readings may have come slower than asked"
        )
    return notes
