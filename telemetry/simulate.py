"""Simulated devices: each posts realistic readings at a steady rate and retries failures with the same ids.

A reading id is ``<device>-<run>-<counter>``: the counter lets a reader spot gaps per device, the run
token keeps a restarted simulator's readings from being taken for duplicates of the last run's, and
sending the same ids on a retry lets the ingest service store each reading exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import signal
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx

from core.readings import Reading, format_ts

READINGS_PATH = "/v1/readings"
REQUEST_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=10.0, pool=None)
MAX_CONNECTIONS = 256
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
STOP_GRACE_S = 3.0
JSON_HEADERS = {"content-type": "application/json"}


@dataclass(frozen=True, slots=True)
class Metric:
    """A quantity a device measures: a mean-reverting random walk around a per-device base value."""

    name: str
    unit: str
    low: float
    high: float
    step: float
    lowest: float
    highest: float


METRICS = (
    Metric("temperature", "°C", low=18.0, high=24.0, step=0.05, lowest=-40.0, highest=85.0),
    Metric("humidity", "%", low=35.0, high=60.0, step=0.3, lowest=0.0, highest=100.0),
)


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What to simulate and where to send it."""

    url: str
    devices: int = 5
    rate: float = 1.0
    sites: int = 1
    batch: int = 1
    duration_s: float | None = None
    report_s: float = 5.0
    auth: httpx.Auth | None = None  # the credentials sent where the ingest service requires them


@dataclass(slots=True)
class Stats:
    """Counts in readings (``posted`` = acknowledged) and failed requests (``errors``, each try counted)."""

    posted: int = 0
    stored: int = 0
    duplicates: int = 0
    errors: int = 0
    last_error: str | None = None

    def line(self, elapsed_s: float) -> str:
        """The one-line summary printed every few seconds."""
        rate = self.posted / elapsed_s if elapsed_s > 0 else 0.0
        text = (
            f"simulate: {elapsed_s:6.1f} s  posted {self.posted} ({rate:.1f}/s)  stored {self.stored}  "
            f"duplicates {self.duplicates}  errors {self.errors}"
        )
        return f"{text}  last error: {self.last_error}" if self.last_error else text


@dataclass(slots=True)
class Device:
    """One simulated device: a random walk per metric, and the counter that makes reading ids unique."""

    name: str
    site: str
    run: str
    rng: random.Random
    counter: int = 0
    bases: list[float] = field(init=False)
    values: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.bases = [self.rng.uniform(metric.low, metric.high) for metric in METRICS]
        self.values = list(self.bases)

    def next_readings(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` readings, the metrics taking turns, as JSON-ready dicts checked by the model."""
        ts = format_ts(datetime.now(UTC))
        readings = []
        for _ in range(count):
            index = self.counter % len(METRICS)
            metric = METRICS[index]
            drift = 0.05 * (self.bases[index] - self.values[index]) + self.rng.gauss(0.0, metric.step)
            self.values[index] = min(metric.highest, max(metric.lowest, self.values[index] + drift))
            self.counter += 1
            reading = {
                "site": self.site,
                "device": self.name,
                "metric": metric.name,
                "value": round(self.values[index], 2),
                "unit": metric.unit,
                "ts": ts,
                "id": f"{self.name}-{self.run}-{self.counter}",
            }
            Reading.model_validate(reading)
            readings.append(reading)
        return readings


def readings_url(url: str) -> str:
    """The POST URL: a bare service URL gets ``/v1/readings``; a full URL is used as given."""
    return url.rstrip("/") + READINGS_PATH if urlsplit(url).path in ("", "/") else url


def make_devices(config: SimulationConfig) -> list[Device]:
    """Devices ``dev-01``... spread round-robin over sites ``site-1``..., all sharing one run token."""
    run = secrets.token_hex(3)
    width = max(2, len(str(config.devices)))
    return [
        Device(name=f"dev-{n:0{width}d}", site=f"site-{(n - 1) % config.sites + 1}", run=run, rng=random.Random())
        for n in range(1, config.devices + 1)
    ]


def retry_after_s(response: httpx.Response) -> float | None:
    """The server's ``Retry-After`` in seconds (delta or HTTP date), or None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    return None


async def stopped_within(stop: asyncio.Event, delay_s: float) -> bool:
    """Wait ``delay_s`` unless ``stop`` is set first; returns whether it was."""
    if delay_s <= 0 or stop.is_set():
        return stop.is_set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay_s):
            await stop.wait()
    return stop.is_set()


async def post(client: httpx.AsyncClient, url: str, body: bytes, stats: Stats, stop: asyncio.Event) -> None:
    """Post one batch until it is acknowledged or refused for good; 503s and lost connections are retried as is."""
    backoff_s = FIRST_BACKOFF_S
    while True:
        try:
            response = await client.post(url, content=body, headers=JSON_HEADERS)
        except httpx.TransportError as err:
            stats.errors += 1
            stats.last_error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            wait_s = backoff_s
        else:
            if response.is_success:
                tally(stats, response)
                return
            stats.errors += 1
            stats.last_error = f"{response.status_code} {response.text[:200]}"
            if response.status_code != 503:
                return
            hint_s = retry_after_s(response)
            wait_s = backoff_s if hint_s is None else hint_s
        backoff_s = min(MAX_BACKOFF_S, backoff_s * 2)
        if await stopped_within(stop, wait_s):
            return


def tally(stats: Stats, response: httpx.Response) -> None:
    """Add an acknowledgement's results: each says whether the reading was new or a duplicate."""
    try:
        results = response.json()["results"]
    except (ValueError, KeyError, TypeError):
        stats.errors += 1
        stats.last_error = f"{response.status_code} with an unexpected body: {response.text[:200]}"
        return
    duplicates = sum(1 for result in results if result.get("duplicate"))
    stats.posted += len(results)
    stats.duplicates += duplicates
    stats.stored += len(results) - duplicates


async def run_device(
    device: Device, client: httpx.AsyncClient, config: SimulationConfig, stats: Stats, stop: asyncio.Event
) -> None:
    """Post a batch every ``batch / rate`` seconds, starting at a random point of the first interval."""
    loop = asyncio.get_running_loop()
    url = readings_url(config.url)
    interval_s = config.batch / config.rate
    if await stopped_within(stop, device.rng.uniform(0, interval_s)):
        return
    next_at = loop.time()
    while not stop.is_set():
        body = json.dumps(device.next_readings(config.batch), separators=(",", ":")).encode()
        await post(client, url, body, stats, stop)
        next_at += interval_s
        if next_at < loop.time() - interval_s:
            # Fell behind (a slow or failing ingest): carry on from now rather than post a burst to catch up.
            next_at = loop.time()
        if await stopped_within(stop, next_at - loop.time()):
            return


async def report(stats: Stats, config: SimulationConfig, started_at: float, out: TextIO, stop: asyncio.Event) -> None:
    """Print the summary line every ``report_s`` seconds until cancelled; if a print fails (``| head`` went away),
    the run stops with it rather than post on unseen."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            await asyncio.sleep(config.report_s)
            print(stats.line(loop.time() - started_at), file=out, flush=True)
            stats.last_error = None
    finally:
        stop.set()


async def simulate(config: SimulationConfig, stop: asyncio.Event, out: TextIO = sys.stdout) -> Stats:
    """Run the devices until ``stop`` is set or ``duration_s`` has passed; returns the final counts."""
    loop = asyncio.get_running_loop()
    started_at = loop.time()
    stats = Stats()
    limits = httpx.Limits(
        max_connections=min(config.devices, MAX_CONNECTIONS),
        max_keepalive_connections=min(config.devices, MAX_CONNECTIONS),
    )
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, limits=limits, auth=config.auth) as client:
        devices = [
            asyncio.create_task(run_device(device, client, config, stats, stop), name=f"device-{device.name}")
            for device in make_devices(config)
        ]
        reporter = asyncio.create_task(report(stats, config, started_at, out, stop), name="report")
        try:
            if config.duration_s is None:
                await stop.wait()
            else:
                await stopped_within(stop, config.duration_s)
        finally:
            stop.set()
            # Requests in flight may finish, so the counts match what was stored; then stop regardless.
            _, pending = await asyncio.wait(devices, timeout=STOP_GRACE_S)
            for task in [*pending, reporter]:
                task.cancel()
            await asyncio.gather(*pending, reporter, return_exceptions=True)
        for task in [*devices, reporter]:
            if not task.cancelled():
                task.result()
    print(stats.line(loop.time() - started_at), file=out, flush=True)
    return stats


async def main(config: SimulationConfig) -> int:
    """``telemetry simulate``: run until SIGINT/SIGTERM (or the duration), print the totals, exit 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(
        f"simulate: {config.devices} devices over {config.sites} site(s), {config.rate:g} readings/s each, "
        f"posting to {readings_url(config.url)}",
        flush=True,
    )
    await simulate(config, stop)
    return 0
