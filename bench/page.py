"""Workload 10: from a device's POST to the reading shown on the dashboard page, in a real browser.

bench/README.md section 10 defines it. On a fresh stream service, Debian's chromium (headless, driven by Playwright,
never a downloaded browser) opens the dashboard on topics of their own; readings are then POSTed through ingest one at
a time at a steady rate, each with its send time, and the seq ingest acknowledged is kept. The page's read-only hook
(``window.telemetryPage``) tells when the animation frame that wrote each seq to the table ended (``shownAt``) and when
each chart was drawn (``chartDraws``), on the wall clock (``performance.timeOrigin + performance.now()``), which is
this machine's, as ``time.time()`` here is. A raw SSE client on the same topics, the latency workload's subscriber,
reads each reading's send time out of its bytes: the reference, so that the browser's own share shows.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import importlib.util
import itertools
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.load import HttpClient, Latency, stream_request, wait_progress
from bench.procs import children_of, cpu_busy_s, proc_cpu_s
from bench.report import Row
from bench.targets import Lab, Server
from bench.workloads import quantile

if TYPE_CHECKING:
    from playwright.async_api import Page, ViewportSize

SITE = "pagebench"
TOPICS = 10
RATE_PER_S = 20.0
WARMUP_S = 1.0  # posted at the same rate before the measured window: the page makes its rows and charts
SLOT_PART = (0.1, 0.9)  # where in its slot of 1 / RATE_PER_S a POST may fall: a timer early or a loop late stays in it
SEED = 14  # the same schedule every run
VIEWPORT: ViewportSize = {"width": 1280, "height": 2000}  # every chart on screen: none off screen is drawn
CHART_REDRAW_MS = 1000  # app.js's: a chart is redrawn at most once a second
# Debian's chromium, as the browser tests find it (the Makefile's CHROMIUM_PATHS and CHROMIUM_INSTALL).
CHROMIUM_PATHS = (Path("/usr/bin/chromium"), Path("/usr/bin/chromium-headless-shell"))
CHROMIUM_INSTALL = "apt-get update && apt-get install -y --no-install-recommends chromium"
WAIT_MS = 30_000  # for the page to show what was posted: a bound, not a figure
CLOCK_SAMPLES = 10
STALL_S = 5.0
# A latency is disturbed by any other work on the CPUs, however little the stream itself uses: worth a note from a
# tenth of the server CPU's time spent on other work, or with the load CPU (which the browser shares) nearly full.
OTHER_SHARE, LOAD_SATURATED = 0.1, 0.85


def chromium() -> Path | None:
    """Debian's chromium, if installed."""
    return next((path for path in CHROMIUM_PATHS if os.access(path, os.X_OK)), None)


def missing() -> str | None:
    """Why the workload cannot run on this machine, or None when it can."""
    if chromium() is None:
        return f"chromium not installed ({CHROMIUM_INSTALL})"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright not installed (the dev extra, which make bench installs)"
    return None


@dataclass
class Posted:
    """One reading acknowledged by ingest: its seq, its topic, and when its POST was written (``time.time()``)."""

    seq: int
    topic: str
    sent: float


@dataclass
class PageResult:
    """What the page showed of the readings of the measured window, beside the raw client."""

    seconds: float
    measured: list[Posted]  # acknowledged, sent in the measured window
    post_failures: int
    shown_ms: list[float]  # sorted: POST to the end of the frame that wrote it to the table, each shown once
    charted_ms: list[float]  # sorted: POST to the end of the frame that drew its chart with it
    charted_of: int  # readings whose chart draw the hook still had (it keeps the latest draws)
    raw_ms: list[float]  # sorted: the raw SSE client's POST to its bytes read
    clock_ms: list[tuple[float, float]]  # the page's clock minus ours, and its error bound, before and after
    stream_cpu_s: float
    other_cpu_s: float  # what else ran on the stream's CPU meanwhile
    browser_cpu_s: float  # chromium's processes and Playwright's driver
    load_busy_s: float  # the load CPU's busy time: this process, ingest, nats-server, the browser, anything else
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every reading posted was shown once, in order, and drawn on its chart."""
        return bool(self.measured) and not self.problems and len(self.shown_ms) == len(self.measured)


async def page(lab: Lab, seconds: float, progress: Callable[[str], None]) -> PageResult:
    """Open the dashboard in chromium on a fresh stream service, post for ``WARMUP_S`` + ``seconds``, and read what
    the page showed and when."""
    from playwright.async_api import async_playwright  # the dev extra's: missing() said it is installed

    executable = chromium()
    assert executable is not None, "missing() says why not"
    server = await lab.start_stream()
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(executable), headless=True)
            try:
                context = await browser.new_context(viewport=VIEWPORT)
                tab = await context.new_page()
                errors: list[str] = []
                tab.on("pageerror", lambda error: errors.append(f"script error: {error}"))
                await tab.goto(f"http://127.0.0.1:{server.port}/?topic={SITE}.%3E")
                if not await until(tab, "p.state === 'live'"):
                    raise RuntimeError("the page did not go live")
                progress(f"  the page is live; posting {RATE_PER_S:g}/s for {WARMUP_S:g} s + {seconds:g} s ...")
                assert lab.ingest is not None and lab.nats is not None and lab.nats.process is not None
                services = {lab.ingest.pid, lab.nats.process.pid, server.child.pid}
                result = await measure(server, lab.ingest_port, tab, seconds, browser_pids(services))
                result.problems += errors
                return result
            finally:
                await browser.close()
    finally:
        lab.stop(server)


async def measure(server: Server, ingest_port: int, tab: Page, seconds: float, browser: list[int]) -> PageResult:
    """Post through ingest while the page and a raw client follow; then what each got, and when. ``browser``: the
    processes of the browser, whose CPU is noted."""
    loop = asyncio.get_running_loop()
    start = time.time() + 0.5
    window = (start + WARMUP_S, start + WARMUP_S + seconds)  # slot edges: each POST is due well inside its slot
    connected: asyncio.Future[None] = loop.create_future()
    raw = Latency(stream_request(server.port, "/v1/stream", [f"{SITE}.>"]), window, connected)
    transport, _ = await loop.create_connection(lambda: raw, "127.0.0.1", server.port)
    try:
        await asyncio.wait_for(connected, 10.0)
        clock = [await clock_offset(tab)]
        cpu_before, busy_before, load_before = server.child.cpu_s(), cpu_busy_s(server.cpu), load_busy_s()
        browser_before = cpu_of(browser)
        posted, failures = await post_steadily(ingest_port, start, round((WARMUP_S + seconds) * RATE_PER_S))
        cpu, browser_cpu = server.child.cpu_s() - cpu_before, cpu_of(browser) - browser_before
        other, load = cpu_busy_s(server.cpu) - busy_before - cpu, load_busy_s() - load_before
        measured = [reading for reading in posted if window[0] <= reading.sent < window[1]]
        await until(tab, "p.receivedCount >= arg && p.shownAt.every((at) => at !== null)", len(posted))
        last = await tab.evaluate("Math.max(...window.telemetryPage.shownAt)")
        topics = sorted({reading.topic for reading in posted})
        drawn = "arg.topics.every((t) => p.chartDraws.some((d) => d.topic === t && d.at >= arg.after))"
        await until(tab, drawn, {"topics": topics, "after": last}, CHART_REDRAW_MS * 5)
        clock.append(await clock_offset(tab))
        hook: dict[str, Any] = await tab.evaluate(
            "(() => { const p = window.telemetryPage; "
            "return { received: p.received, shownAt: p.shownAt, chartDraws: p.chartDraws }; })()"
        )
        await wait_progress(lambda: len(raw.latencies_s), len(measured), asyncio.Event(), stall_s=STALL_S)
    finally:
        transport.close()
    result = PageResult(seconds, measured, failures, [], [], 0, [], clock, cpu, other, browser_cpu, load)
    result.raw_ms = sorted(latency * 1e3 for latency in raw.latencies_s)
    if len(raw.latencies_s) != len(measured):
        result.problems.append(f"the raw client read {len(raw.latencies_s)} of {len(measured)} readings")
    judge(result, posted, hook["received"], hook["shownAt"], hook["chartDraws"])
    return result


def schedule(start: float, count: int) -> list[tuple[float, str]]:
    """When each POST is due, and its device. The n-th at a random point of the middle of its slot, from ``start`` +
    n / RATE_PER_S on; each round of TOPICS readings visits every device once, in a random order. At exactly every
    50 ms (three frames of 60 Hz), every reading would wait the same part of the page's frame, and each topic the same
    part of its chart's 1 s cycle: the figures would be those of the run's phase, not of the page."""
    rng = random.Random(SEED)
    devices = [f"dev-{index:02d}" for index in range(TOPICS)]
    due = []
    for first in range(0, count, TOPICS):
        for turn, device in zip(range(first, min(count, first + TOPICS)), rng.sample(devices, TOPICS), strict=False):
            due.append((start + (turn + rng.uniform(*SLOT_PART)) / RATE_PER_S, device))
    return due


async def post_steadily(ingest_port: int, start: float, count: int) -> tuple[list[Posted], int]:
    """POST ``count`` readings one at a time as ``schedule`` says, each with its send time in the tag ``sent``; the
    acknowledged ones, and how many were not."""
    client = await HttpClient.open(ingest_port)
    posted, failures = [], 0
    try:
        for turn, (due, device) in enumerate(schedule(start, count)):
            await asyncio.sleep(max(0.0, due - time.time()))
            sent = time.time()
            body = {"site": SITE, "device": device, "metric": "temperature", "value": 20.0 + turn % 50 / 10}
            body |= {"unit": "C", "tags": {"sent": f"{sent:.6f}"}}
            status, answer = await client.post("/v1/readings", json.dumps(body, separators=(",", ":")).encode())
            if status == 202:
                posted.append(Posted(json.loads(answer)["results"][0]["seq"], f"{SITE}.{device}.temperature", sent))
            else:
                failures += 1
    finally:
        await client.close()
    return posted, failures


def judge(
    result: PageResult,
    posted: list[Posted],
    received: list[int],
    shown_at: list[float | None],
    draws: list[dict[str, Any]],
) -> None:
    """Check the seqs the page received against those acknowledged (all of them, once, in order) and fill in each
    measured reading's times: to its frame in the table, and to the first draw of its chart at or after that."""
    expected = [reading.seq for reading in posted]
    if received != expected:
        got, wanted = set(received), set(expected)
        increasing = all(earlier < later for earlier, later in itertools.pairwise(received))
        result.problems.append(
            f"the page received {len(received)} readings for {len(expected)}: {len(wanted - got)} missing, "
            f"{len(received) - len(got)} doubled, {len(got - wanted)} not posted"
            + ("" if increasing else ", not in order")
        )
    once = {seq for seq, count in Counter(received).items() if count == 1}
    shown = {seq: at for seq, at in zip(received, shown_at, strict=True) if seq in once and at is not None}
    if unshown := sum(1 for seq in received if seq not in shown and seq in once):
        result.problems.append(f"{unshown} readings received but never written to the table")
    draw_times: dict[str, list[float]] = {}
    for draw in draws:
        draw_times.setdefault(draw["topic"], []).append(draw["at"])
    kept_from = draws[0]["at"] if draws else math.inf  # draws before it were dropped: no reading before it is judged
    undrawn = 0
    for reading in result.measured:
        if (at := shown.get(reading.seq)) is None:
            continue
        result.shown_ms.append(at - reading.sent * 1e3)
        if at < kept_from:
            continue
        result.charted_of += 1
        times = draw_times.get(reading.topic, [])
        if (after := bisect.bisect_left(times, at)) < len(times):
            result.charted_ms.append(times[after] - reading.sent * 1e3)
        else:
            undrawn += 1
    if undrawn:
        result.problems.append(f"{undrawn} readings shown in the table but never drawn on their chart")
    result.shown_ms.sort()
    result.charted_ms.sort()


async def until(tab: Page, expression: str, arg: Any = None, timeout_ms: float = WAIT_MS) -> bool:
    """Until ``expression`` (of ``arg`` and the hook ``p``) is true in the page; False after ``timeout_ms``."""
    from playwright.async_api import TimeoutError as PageTimeout

    try:
        await tab.wait_for_function(
            f"(arg) => {{ const p = window.telemetryPage; return !!p && ({expression}); }}",
            arg=arg,
            timeout=timeout_ms,
            polling=100,
        )
    except PageTimeout:
        return False
    return True


async def clock_offset(tab: Page) -> tuple[float, float]:
    """The page's wall clock minus ours in ms, and the error bound: half the shortest of a few round trips."""
    best = (0.0, math.inf)
    for _ in range(CLOCK_SAMPLES):
        before = time.time()
        theirs = await tab.evaluate("performance.timeOrigin + performance.now()")
        after = time.time()
        if (after - before) * 500 < best[1]:
            best = (theirs - (before + after) * 500, (after - before) * 500)
    return best


def browser_pids(services: set[int]) -> list[int]:
    """This process's descendants but the lab's ``services``: Playwright's driver and chromium's processes."""
    found, parents = [], [os.getpid()]
    while parents:
        for child in children_of(parents.pop()):
            if child not in services:
                found.append(child)
                parents.append(child)
    return found


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of the processes still running."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += proc_cpu_s(pid)
    return total


def load_busy_s() -> float:
    """Busy seconds of the CPUs this process may run on: the load generator's, with ingest, NATS and chromium."""
    return sum(cpu_busy_s(cpu) for cpu in os.sched_getaffinity(0))


def spread(values: list[float]) -> str:
    """p50 / p99 / max in ms (nearest rank)."""
    if not values:
        return "n/a"
    return f"{quantile(values, 0.50):,.1f} / {quantile(values, 0.99):,.1f} / {values[-1]:,.1f}"


def page_rows(result: PageResult) -> list[Row]:
    """Post to shown in the table, beside the raw client's post to read; post to drawn on the chart, reported."""
    label = f"page, {RATE_PER_S:g} rdg/s on {TOPICS} topics → chromium"
    return [
        Row(
            f"{label}: post→shown p50/p99/max",
            f"{spread(result.shown_ms)} ms, {len(result.shown_ms)} of {len(result.measured)} shown",
            f"raw SSE client {spread(result.raw_ms)} ms",
            "",
            "every reading shown once",
            result.ok,
        ),
        Row(
            f"{label}: post→chart p50/p99/max",
            f"{spread(result.charted_ms)} ms, {len(result.charted_ms)} of {result.charted_of} drawn",
            f"charts redrawn at most every {CHART_REDRAW_MS} ms",
        ),
    ]


def page_notes(result: PageResult, server_cpu: int) -> list[str]:
    """The browser's share, the clocks, the CPU used, what went wrong, and whether other work shared the CPUs."""
    (before, before_error), (after, after_error) = result.clock_ms
    span = WARMUP_S + result.seconds
    share = quantile(result.shown_ms, 0.5) - quantile(result.raw_ms, 0.5) if result.shown_ms and result.raw_ms else 0
    notes = [
        f"page: {len(result.measured)} readings in {result.seconds:g} s ({result.post_failures} failed posts); the "
        f"browser's share at p50 {share:.1f} ms (post→shown minus the raw client's post→read). Clocks: the page's "
        f"(performance.timeOrigin + performance.now()) minus ours (time.time()) {before:+.2f} ± {before_error:.2f} "
        f"ms before, {after:+.2f} ± {after_error:.2f} ms after, not corrected for. CPU over the {span:g} s of "
        f"posting: stream {result.stream_cpu_s:.2f} s, chromium with Playwright's driver {result.browser_cpu_s:.2f} "
        f"s; the load CPU was {result.load_busy_s / span:.0%} busy (this process, ingest, nats-server, the browser, "
        "anything else)"
    ]
    if result.problems:
        notes.append(f"page: {'; '.join(result.problems)}")
    if result.other_cpu_s > OTHER_SHARE * span or result.load_busy_s > LOAD_SATURATED * span:
        notes.append(
            f"page: CPU {server_cpu} also ran {result.other_cpu_s:.1f} s of other work (interrupts, or processes this "
            f"run did not start), the load CPU was {result.load_busy_s / span:.0%} busy: figures may be disturbed"
        )
    return notes
