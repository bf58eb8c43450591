"""Locust load test of the telemetry platform: devices POST readings, dashboards follow them over SSE.

Run from the repository root (Locust puts the working directory on ``sys.path``, which makes
``loadtest`` importable)::

    locust -f loadtest/locustfile.py --headless -t 60s -H http://127.0.0.1:8000 \\
        --stream-url http://127.0.0.1:8001 --shape storm --devices 20 --dashboards 10

``-H`` is the ingest service, ``--stream-url`` the stream service (default: ``-H``). Each device user
is one device posting ``--device-rate`` readings/s, a share of them in batches, with ids
``<device>-<counter>`` and ``ts`` = the epoch time just before the POST. Each dashboard user follows
site patterns (``site3.>``) like a browser's ``EventSource``: it resumes with ``Last-Event-ID`` after a
drop or an ``end`` event, reports each reading to Locust with its end-to-end latency (time read minus
``ts``; both clocks must be the same machine's, or synchronised), and reports a gap or a duplicate in a
device's counters as a failure. The stream service conflates beyond ``TELEMETRY_MAX_RATE_PER_S`` (200
events/s per connection by default): conflated readings are gaps here, so keep a dashboard's rate
under it or raise the setting (``python -m loadtest.run`` raises it).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import random
import secrets
import time
import weakref
from datetime import datetime
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]
import gevent.event  # type: ignore[import-untyped]
from locust import FastHttpUser, User, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import StatsEntry

from loadtest.config import DEVICE_PREFIX, LoadConfig, add_arguments
from loadtest.sequences import SequenceTracker, Verdict, parse_reading_id, reading_id
from loadtest.shapes import STORM_MESSAGE, TelemetryShape
from loadtest.sse import Event, SseConnection
from loadtest.summary import Counters, Summary, counters

__all__ = ["DashboardUser", "DeviceUser", "TelemetryShape"]

logger = logging.getLogger(__name__)

READINGS_PATH = "/v1/readings"
JSON_HEADERS = {"Content-Type": "application/json"}
DEFAULT_RETRY_S = 2.0  # until the server's retry: hint is known (it sends one first on every stream)
MAX_CATCH_UP_S = 1.0  # a device that fell further behind its schedule starts a new one instead of bursting
MAX_DETAIL_LOGS = 20
STOP_REPORT_TIMEOUT_S = 10.0  # workers report every 3 s
METRICS = (("temperature", "°C", 18.0, 24.0), ("humidity", "%", 35.0, 60.0))

_run_tokens: dict[int, str] = {}
_device_numbers = itertools.count(1)
_dashboard_numbers = itertools.count(1)
_dashboards: weakref.WeakSet[DashboardUser] = weakref.WeakSet()
_details_logged = itertools.count()
# Workers that have not sent a report since the last stop (web UI runs; see on_test_stop).
_unreported: set[str] = set()
_all_reported = gevent.event.Event()


class SequenceError(Exception):
    """A gap or a duplicate in a device's readings, as a dashboard saw them."""


class StreamError(Exception):
    """The stream broke off, or sent what a dashboard cannot read."""


def run_token() -> str:
    """This process's part of device names: unique across runs (the ingest remembers ids for two minutes)
    and across workers, also those ``--processes`` forks after importing this file (hence per pid)."""
    return _run_tokens.setdefault(os.getpid(), secrets.token_hex(3))


def parse_ts(text: str) -> float:
    """Epoch seconds from the RFC 3339 ``ts`` the platform sends (``...Z``: Python 3.10 in some Locust images)."""
    return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text).timestamp()


def config_of(environment: Environment) -> LoadConfig:
    """The options as they are now (the web UI may change them between runs)."""
    assert environment.parsed_options is not None
    return LoadConfig.from_options(environment.parsed_options)


def log_detail(message: str, *args: object) -> None:
    """Log the first few individual problems; the counts are in the stats and the summary."""
    if next(_details_logged) < MAX_DETAIL_LOGS:
        logger.warning(message, *args)


class DeviceUser(FastHttpUser):
    """One device: readings numbered without holes, posted singly or in batches at a steady rate."""

    weight = 2  # set from --devices at init: the shape's user counts keep devices:dashboards

    def on_start(self) -> None:
        self.config = config_of(self.environment)
        number = next(_device_numbers)
        self.device = f"{DEVICE_PREFIX}-{run_token()}-{number}"
        self.site = self.config.site(number)
        self.counter = 0
        self.rng = random.Random()
        # Devices start at random points of their period, so posts spread evenly over each second.
        self.next_post_at = time.monotonic() + self.rng.uniform(0.0, 1.0 / self.config.device_rate)
        gevent.sleep(self.wait_time())

    def wait_time(self) -> float:
        """Until the next post is due on the device's schedule."""
        return max(0.0, self.next_post_at - time.monotonic())

    @task
    def post(self) -> None:
        """Post the next reading, or the next batch; pace so the device averages ``device_rate`` readings/s."""
        count = self.config.batch_size if self.rng.random() < self.config.batch_share else 1
        self.send(self.next_readings(count))
        now = time.monotonic()
        self.next_post_at = max(self.next_post_at + count / self.config.device_rate, now - MAX_CATCH_UP_S)

    def next_readings(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` readings, numbered on; ``ts`` is now, the moment the POST is about to go."""
        sent_at = round(time.time(), 6)
        readings = []
        for _ in range(count):
            self.counter += 1
            metric, unit, low, high = METRICS[self.counter % len(METRICS)]
            readings.append(
                {
                    "site": self.site,
                    "device": self.device,
                    "metric": metric,
                    "value": round(self.rng.uniform(low, high), 2),
                    "unit": unit,
                    "ts": sent_at,
                    "id": reading_id(self.device, self.counter),
                }
            )
        return readings

    def send(self, readings: list[dict[str, Any]]) -> None:
        """POST until stored, retrying with the same ids (stored once): a given-up reading would be a gap."""
        body = json.dumps(readings[0] if len(readings) == 1 else readings)
        name = f"{READINGS_PATH} (batch)" if len(readings) > 1 else READINGS_PATH
        first_try = True
        while True:
            with self.client.post(READINGS_PATH, data=body, headers=JSON_HEADERS, name=name, catch_response=True) as r:
                if r.status_code == 202:
                    try:
                        results = r.json()["results"]
                    except (ValueError, KeyError, TypeError):
                        results = []
                    if len(results) != len(readings):
                        r.failure(f"202 with {len(results)} results for {len(readings)} readings")
                    elif first_try and any(result.get("duplicate") for result in results):
                        r.failure("a new reading id was taken for a duplicate")
                    else:
                        r.success()
                    counters.readings_posted += len(readings)
                    return
                retry_after_s = retry_after(r.headers.get("retry-after") if r.headers else None)
                r.failure(f"HTTP {r.status_code}" if r.status_code else f"no answer: {getattr(r, 'error', None)!r}")
            first_try = False
            gevent.sleep(retry_after_s)


def retry_after(value: str | None) -> float:
    """The server's ``Retry-After`` (a 429 or a 503) in seconds; 1 s when it sent none (or a date: not ours)."""
    try:
        seconds = float(value or "1")
    except ValueError:
        return 1.0
    return seconds if 0 <= seconds < math.inf else 1.0


class DashboardUser(User):
    """A browser tab with an ``EventSource`` on site patterns: resumes with ``Last-Event-ID``, checks sequences."""

    weight = 1  # set from --dashboards at init

    def on_start(self) -> None:
        self.config = config_of(self.environment)
        self.patterns = self.config.patterns(next(_dashboard_numbers))
        self.tracker = SequenceTracker()
        self.last_event_id: str | None = None
        self.retry_s = DEFAULT_RETRY_S
        self.delay_s = 0.0
        self.connection: SseConnection | None = None
        self.dropped_pause_s: float | None = None
        self.replay_before = 0.0
        _dashboards.add(self)

    def on_stop(self) -> None:
        _dashboards.discard(self)
        if self.connection is not None:
            self.connection.close()

    def wait_time(self) -> float:
        """The pause before the next connection: the server's retry hint, as ``EventSource`` waits."""
        return self.delay_s

    def drop(self, pause_ms: int | None) -> bool:
        """Close the open stream now (a reconnect storm); the reader resumes after ``pause_ms``."""
        if self.connection is None:
            return False
        self.dropped_pause_s = pause_ms / 1000 if pause_ms is not None else self.retry_s
        self.connection.close()
        return True

    @task
    def follow(self) -> None:
        """One connection, from connect to its end; Locust then waits ``wait_time`` and calls again."""
        self.delay_s, self.dropped_pause_s = self.retry_s, None
        resuming = self.last_event_id is not None
        name = "resume" if resuming else "connect"
        started = time.perf_counter()
        try:
            connection = SseConnection.open(
                self.config.stream_url, self.patterns, self.last_event_id, self.config.dashboard_rate
            )
        except Exception as err:  # StreamRefused, socket errors, geventhttpclient's parse errors
            self.report(name, (time.perf_counter() - started) * 1000, error=err)
            return
        self.report(name, (time.perf_counter() - started) * 1000)
        # On a resumed stream, readings sent before it opened can only have come from the replay.
        self.replay_before = time.time() if resuming else 0.0
        counters.connections += 1
        counters.resumes += resuming
        self.connection = connection
        ended = False
        try:
            for event, received_at in connection.events():
                ended = self.handle(event, received_at) or ended
            if not ended:
                self.report("stream lost", 0.0, error=StreamError("the stream closed without an end event"))
        except Exception as err:
            if self.dropped_pause_s is None:
                self.report("stream lost", 0.0, error=StreamError(f"{type(err).__name__}: {err}"))
        finally:
            self.connection = None
            connection.close()
            if connection.parser.retry_ms is not None:
                self.retry_s = connection.parser.retry_ms / 1000
            self.delay_s = self.dropped_pause_s if self.dropped_pause_s is not None else self.retry_s

    def handle(self, event: Event, received_at: float) -> bool:
        """Check and report one event; True for ``end``, after which the server closes the stream."""
        if event.id is not None:
            self.last_event_id = event.id
        if event.event == "reading":
            self.reading(event, received_at)
        elif event.event == "reset":
            counters.resets += 1
            self.report("reset", 0.0, error=StreamError(f"reset: {event.data}"))
        elif event.event == "end":
            reason = "?"
            with contextlib.suppress(ValueError, AttributeError):
                reason = str(json.loads(event.data).get("reason", "?"))
            self.report(f"end {reason}", 0.0)
            return True
        return False

    def reading(self, event: Event, received_at: float) -> None:
        """Report a reading's latency and check it against its device's sequence."""
        try:
            data = json.loads(event.data)
            device = data["device"]
            counter = parse_reading_id(device, data.get("id", ""))
            sent_at = parse_ts(data["ts"]) if counter is not None else 0.0
        except (ValueError, KeyError, TypeError) as err:
            self.report("reading", 0.0, error=StreamError(f"unreadable reading: {err}"))
            return
        if counter is None:
            return  # not from this load test (another client posts to the same sites)
        name = "reading (replay)" if sent_at < self.replay_before else "reading"
        self.report(name, max(0.0, received_at - sent_at) * 1000, length=len(event.data))
        seen = self.tracker.observe(device, counter)
        if seen.verdict is Verdict.GAP:
            counters.gaps += 1
            counters.missing += seen.missing
            log_detail("gap: %s went from %s to %s (event id %s)", device, seen.previous, counter, event.id)
            self.report("gap", 0.0, error=SequenceError("readings missing from a device's sequence"))
        elif seen.verdict is Verdict.DUPLICATE:
            counters.duplicates += 1
            log_detail("duplicate: %s sent %s after %s (event id %s)", device, counter, seen.previous, event.id)
            self.report("duplicate", 0.0, error=SequenceError("a reading seen again, or after a later one"))

    def report(self, name: str, response_time_ms: float, length: int = 0, error: Exception | None = None) -> None:
        """One row of Locust's statistics (type ``SSE``); with ``error`` it counts as a failure."""
        self.environment.events.request.fire(
            request_type="SSE",
            name=name,
            response_time=response_time_ms,
            response_length=length,
            exception=error,
            context={},
        )


def on_storm(environment: Environment, msg: Any, **_kwargs: Any) -> None:
    """Every dashboard of this process drops its stream at once; each resumes with ``Last-Event-ID``."""
    pause_ms = (msg.data or {}).get("pause_ms")
    dropped = sum(dashboard.drop(pause_ms) for dashboard in list(_dashboards))
    counters.storm_drops += dropped
    logger.info("reconnect storm: dropped %d of %d dashboard streams", dropped, len(_dashboards))


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def on_parser(parser: Any, **_kwargs: Any) -> None:
    add_arguments(parser)


@events.init.add_listener  # type: ignore[untyped-decorator]
def on_init(environment: Environment, **_kwargs: Any) -> None:
    """Weights from the options (the master dispatches by them), the storm listener, the counters' way home."""
    runner = environment.runner
    if environment.parsed_options is not None:
        config = config_of(environment)
        DeviceUser.weight, DashboardUser.weight = config.devices, config.dashboards
        if config.readings_per_s_per_dashboard() > 200:
            logger.warning(
                "a dashboard will receive about %.0f readings/s: above the stream service's default "
                "TELEMETRY_MAX_RATE_PER_S (200) they conflate and show up as gaps; raise the setting",
                config.readings_per_s_per_dashboard(),
            )
    if runner is None:
        return
    if not isinstance(runner, MasterRunner):
        runner.register_message(STORM_MESSAGE, on_storm)
    if isinstance(runner, WorkerRunner):
        environment.events.report_to_master.add_listener(  # type: ignore[no-untyped-call]
            lambda client_id, data, **_: data.update(telemetry=counters.take())
        )
    if isinstance(runner, MasterRunner):
        environment.events.worker_report.add_listener(on_worker_report)  # type: ignore[no-untyped-call]


def on_worker_report(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
    """On the master: add a worker's counts; after a stop, note that this worker has reported since."""
    counters.add(data.get("telemetry", {}))
    _unreported.discard(client_id)
    if not _unreported:
        _all_reported.set()


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def on_test_start(environment: Environment, **_kwargs: Any) -> None:
    """A new run (Locust clears its stats too): counts start again."""
    counters.take()


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    """In the web UI a run ends with a stop, not a quit: log its summary once every worker has reported."""
    runner, options = environment.runner, environment.parsed_options
    if options is None or options.headless or isinstance(runner, WorkerRunner):
        return  # headless: the summary comes at quit, after the workers' final reports
    _unreported.clear()
    _all_reported.clear()
    if isinstance(runner, MasterRunner):
        _unreported.update(client.id for client in runner.clients.all)
    if not _unreported:
        _all_reported.set()
    gevent.spawn(log_summary_when_reported, environment)


def log_summary_when_reported(environment: Environment) -> None:
    """Wait (bounded) for every worker's report after the stop, then log the summary."""
    _all_reported.wait(timeout=STOP_REPORT_TIMEOUT_S)
    logger.info("\n".join(summarise(environment, config_of(environment)).lines()))


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def on_quitting(environment: Environment, **_kwargs: Any) -> None:
    """Log the summary (and save it with --summary-json); a gap or a duplicate fails the run's exit code."""
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    config = config_of(environment)
    summary = summarise(environment, config)
    logger.info("\n".join(summary.lines()))
    if config.summary_json:
        summary.write(Path(config.summary_json))
    if not summary.ok:
        environment.process_exit_code = 1


def summarise(environment: Environment, config: LoadConfig) -> Summary:
    """Figures from Locust's stats (latency percentiles, requests) and our counters (readings, sequences)."""
    stats = environment.stats
    live = stats.entries.get(("reading", "SSE"))
    replay = stats.entries.get(("reading (replay)", "SSE"))
    posts = StatsEntry(stats, READINGS_PATH, "POST")
    for (_, method), entry in stats.entries.items():
        if method == "POST":
            posts.extend(entry)
    ended = stats.total.last_request_timestamp or time.time()
    return Summary(
        shape=config.shape,
        duration_s=max(0.0, ended - stats.total.start_time),
        devices=config.devices,
        dashboards=config.dashboards,
        posts=posts.num_requests,
        events=live.num_requests if live is not None else 0,
        replayed=replay.num_requests if replay is not None else 0,
        e2e_ms=percentiles(live, ("p50", "p95", "p99", "max")),
        replay_ms=percentiles(replay, ("p50", "p99", "max")),
        post_ms=percentiles(posts, ("p50", "p99")),
        requests=stats.total.num_requests,
        failures=stats.total.num_failures,
        counters={name: getattr(counters, name) for name in Counters.names()},
    )


def percentiles(entry: StatsEntry | None, names: tuple[str, ...]) -> dict[str, float]:
    """``{"p50": ..., "max": ...}`` in ms from Locust's histogram (whole ms below 100 ms, coarser above)."""
    if entry is None or not entry.num_requests:
        return {}
    most = round(entry.max_response_time, 1)
    # The histogram rounds (to 10 ms above 100 ms): a rounded percentile may not exceed the exact maximum.
    return {
        name: most if name == "max" else min(most, entry.get_response_time_percentile(int(name[1:]) / 100))
        for name in names
    }
