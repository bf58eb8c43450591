"""``python -m bench.ingest [--quick]``: acknowledged readings per ingest CPU second, against a bare nats-py ceiling.

Section 7 of bench/README.md. One run starts a nats-server, the ingest service (``python -m telemetry ingest``,
as in production) and, for each workload, a bare nats-py loop that publishes the same stored payloads
with the same headers to the same JetStream stream with the same number in flight (the ceiling). The
ingest and the ceiling are pinned to one CPU with ``taskset``, this process (the load generator) and
nats-server to the other(s). The figure is readings acknowledged per CPU second of the measured
process alone, from ``/proc/PID/stat``, over a window that starts after a warm-up. Then (section 8) the
same workloads against fresh ingest services with auth off and on, interleaved: the cost of auth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats
import uvloop
from nats.js.api import PubAck

from bench.auth import AUTH_TARGET, RUNS, Comparison, auth_settings, bearer, new_secret, tokens, write_api_keys
from bench.procs import die_with_parent, free_ports, proc_cpu_s, set_affinity, stop_process
from core.readings import Reading, stored_payload
from telemetry.natsserver import LocalNatsServer

STREAM, PREFIX = "BENCH_INGEST", "bench"
TARGET = 0.5  # batched ingest >= 50 % of the ceiling
DEVICES = 10_000  # spread so that the per-device rate limit (on, at its default) never refuses a reading
READING = (
    '{"site":"plant1","device":"dev-%05d","metric":"temperature","value":21.53,"ts":"2026-11-27T07:00:00.000Z",'
    '"unit":"C","tags":{"room":"east","line":"3"},"id":"%s-%09d"}'
)


@dataclass(frozen=True)
class Workload:
    """Clients posting ``batch`` readings per request; the ceiling keeps ``clients * batch`` in flight."""

    name: str
    clients: int
    batch: int


WORKLOADS = (Workload("single readings, 32 clients", 32, 1), Workload("batches of 100, 8 clients", 8, 100))
PARTS = ("ceiling", "auth")  # --only: the ingest against the bare loop; auth on against auth off (section 8)
AUTH_VARIANTS = {"off": "off", "token": "bearer token", "apikey": "API key"}  # the first round's order
PUBLISH_PATTERN = "plant1.>"  # covers every reading posted, but not every topic: each reading's topic is checked


@dataclass(frozen=True)
class Measure:
    """Readings acknowledged and CPU seconds of the measured process over one window."""

    readings: int
    cpu_s: float
    wall_s: float

    @property
    def per_cpu_s(self) -> float:
        return self.readings / self.cpu_s if self.cpu_s > 0 else float("nan")

    @property
    def cpu_per_reading(self) -> float:
        """CPU seconds per reading acknowledged (infinite when none was)."""
        return self.cpu_s / self.readings if self.readings else math.inf


def log(text: str) -> None:
    print(f"[bench.ingest {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# The ceiling: a bare nats-py loop, run as a child process pinned to the ingest's CPU


async def ceiling(nats_url: str, in_flight: int, warmup_s: float, duration_s: float, tag: str) -> Measure:
    """Publish stored payloads with ``in_flight`` unacknowledged at most, as the ingest does; measure a window."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream(publish_async_max_pending=in_flight)
    # The payload the ingest stores for the readings the load generator posts, built as cheaply as possible.
    stored = stored_payload(Reading.model_validate_json(READING % (0, tag, 0)), datetime.now(UTC))
    template = stored.replace(b"dev-00000", b"dev-%05d").replace(b"%s-000000000" % tag.encode(), b"%s-%09d")
    assert template.count(b"%") == 4, template
    acked = 0

    def count(future: asyncio.Future[PubAck]) -> None:
        nonlocal acked
        if not future.cancelled() and future.exception() is None:
            acked += 1

    loop = asyncio.get_running_loop()
    start = loop.time()
    marks: list[tuple[int, float, float]] = []
    sequence = 0
    while len(marks) < 2:
        now = loop.time()
        if now - start >= warmup_s + (duration_s if marks else 0.0):
            marks.append((acked, proc_cpu_s(os.getpid()), now))
        for _ in range(100):
            sequence += 1
            device = sequence % DEVICES
            future = await js.publish_async(
                f"{PREFIX}.plant1.dev-{device:05d}.temperature",
                template % (device, device, tag.encode(), sequence),
                stream=STREAM,
                headers={"Nats-Msg-Id": f"plant1.dev-{device:05d}.{tag}-{sequence:09d}"},  # as ingest writes it
            )
            future.add_done_callback(count)
    await js.publish_async_completed()
    await nc.close()
    (acked0, cpu0, wall0), (acked1, cpu1, wall1) = marks
    return Measure(acked1 - acked0, cpu1 - cpu0, wall1 - wall0)


# ---------------------------------------------------------------------------------------------------------------
# The load generator: keep-alive HTTP/1.1 on raw sockets, cheaper per request than any client library


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
    """Run the workload against the ingest service; measure the ingest process over the window after warm-up.

    ``credentials``: one ``Authorization`` value per client when the service requires auth.
    """
    posters = [Poster(port, credentials[n] if credentials else None) for n in range(workload.clients)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(p.run(bodies(workload, n, tag), stop)) for n, p in enumerate(posters)]
    await asyncio.sleep(warmup_s)  # the warm-up is a span of time, not an event to wait for
    acked0, cpu0, wall0 = sum(p.acked for p in posters), proc_cpu_s(pid), time.monotonic()
    await asyncio.sleep(duration_s)
    acked1, cpu1, wall1 = sum(p.acked for p in posters), proc_cpu_s(pid), time.monotonic()
    stop.set()
    await asyncio.gather(*tasks)
    refused = sum((Counter(p.refused) for p in posters), Counter[int]())
    if refused:
        raise RuntimeError(f"{workload.name}: answers other than a clean 202: {dict(refused)}")
    return Measure(acked1 - acked0, cpu1 - cpu0, wall1 - wall0)


# ---------------------------------------------------------------------------------------------------------------
# The run


def child(argv: list[str], cpu: int, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as output:
        return subprocess.Popen(
            ["taskset", "-c", str(cpu), *argv],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Poll /readyz (a subprocess offers nothing to await)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the ingest service exited with code {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError("the ingest service did not become ready")


def run_ceiling(nats_url: str, in_flight: int, warmup_s: float, duration_s: float, cpu: int, work: Path) -> Measure:
    """The bare loop as a child pinned to ``cpu``; it reports its own window as JSON."""
    tag = f"c{in_flight}-{time.time_ns()}"
    argv = [sys.executable, "-m", "bench.ingest", "--ceiling", nats_url, str(in_flight), str(warmup_s), str(duration_s)]
    process = child([*argv, tag], cpu, {}, work / "ceiling.log")
    try:
        process.wait(warmup_s + duration_s + 60)
    finally:
        stop_process(process)
    lines = (work / "ceiling.log").read_text().strip().splitlines()
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"the ceiling loop failed: {lines[-5:]}")
    return Measure(**json.loads(lines[-1]))


def ingest_env(nats_url: str, port: int, settings: dict[str, str]) -> dict[str, str]:
    """The ingest service's variables: this run's NATS and stream, quiet JSON logs, ``settings`` (field names)."""
    env = {
        "TELEMETRY_NATS_URLS": nats_url,
        "TELEMETRY_STREAM_NAME": STREAM,
        "TELEMETRY_SUBJECT_PREFIX": PREFIX,
        "TELEMETRY_INGEST_PORT": str(port),
        "TELEMETRY_LOG_LEVEL": "warning",
        "TELEMETRY_LOG_FORMAT": "json",
    }
    return env | {f"TELEMETRY_{name.upper()}": value for name, value in settings.items()}


def start_ingest(
    nats_url: str, cpu: int, work: Path, name: str, settings: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """``python -m telemetry ingest`` pinned to ``cpu``, once it is ready; the caller stops it."""
    port = free_ports(1)[0]
    env = ingest_env(nats_url, port, settings or {})
    process = child([sys.executable, "-m", "telemetry", "ingest"], cpu, env, work / f"ingest-{name}.log")
    try:
        wait_ready(port, process)
    except BaseException:
        stop_process(process)
        raise
    return process, port


def auth_runs(nats_url: str, cpu: int, work: Path, warmup_s: float, duration_s: float) -> dict[str, list[Measure]]:
    """Section 8 of bench/README.md: ``RUNS`` rounds of a fresh ingest service per variant (off, token, API key),
    each driven with every workload; the measures by ``"<workload>/<variant>"``, in the order they were taken.

    Each round starts one variant later than the one before (off, token, key; token, key, off; key, off, token), so
    that each variant runs once in each place of a round: a drift within rounds cannot favour one.
    """
    secret = new_secret()
    clients = max(workload.clients for workload in WORKLOADS)
    keys_file = work / "api-keys"
    credentials = {
        "off": [],
        "token": [bearer(t) for t in tokens(secret, clients, publish=[PUBLISH_PATTERN])],
        "apikey": [bearer(key) for key in write_api_keys(keys_file, clients, [PUBLISH_PATTERN])],
    }
    measures: dict[str, list[Measure]] = {}
    variants = list(AUTH_VARIANTS)
    for run in range(1, RUNS + 1):
        shift = (run - 1) % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            settings = auth_settings(secret, keys_file) if variant != "off" else {}
            process, port = start_ingest(nats_url, cpu, work, f"{variant}-{run}", settings)
            try:
                if variant != "off":
                    refused = httpx.post(f"http://127.0.0.1:{port}/v1/readings", content=b"{}", timeout=5.0)
                    if refused.status_code != 401:
                        raise RuntimeError(f"auth is not on: a POST without credentials got {refused.status_code}")
                for workload in WORKLOADS:
                    log(f"auth: run {run} of {RUNS}, {AUTH_VARIANTS[variant]}, {workload.name}")
                    tag = f"a{run}{variant}{workload.batch}-{time.time_ns()}"
                    measure = uvloop.run(
                        drive(port, process.pid, workload, warmup_s, duration_s, tag, credentials[variant])
                    )
                    log(f"  {measure.per_cpu_s:,.0f} readings / CPU s")
                    measures.setdefault(f"{workload.name}/{variant}", []).append(measure)
            finally:
                stop_process(process)
    return measures


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows (about a minute in all)")
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma separated, of {', '.join(PARTS)} (default: both)"
    )
    parser.add_argument("--ceiling", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ceiling:
        url, in_flight, warmup_s, duration_s, tag = args.ceiling
        measure = uvloop.run(ceiling(url, int(in_flight), float(warmup_s), float(duration_s), tag))
        print(json.dumps(measure.__dict__), flush=True)
        return 0
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    if only - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(only - set(PARTS)))}")

    warmup_s, duration_s = (0.5, 2.0) if args.quick else (3.0, 15.0)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("bench.ingest needs two CPUs: one for the measured process, one for the load")
    server_cpu, load_cpu, nats_cpus = cpus[0], cpus[1], set(cpus[2:]) or {cpus[1]}
    os.sched_setaffinity(0, {load_cpu})
    rows: list[tuple[Workload, Measure, Measure]] = []
    auth: dict[str, list[Measure]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        nats_port, monitor_port = free_ports(2)
        server = LocalNatsServer(
            port=nats_port, monitor_port=monitor_port, store_dir=work / "nats", start_new_session=True
        )
        server.start()
        try:
            assert server.process is not None
            set_affinity(server.process.pid, nats_cpus)
            if "ceiling" in only:
                ingest, port = start_ingest(server.url, server_cpu, work, "ceiling")
                try:
                    for workload in WORKLOADS:
                        in_flight = workload.clients * workload.batch
                        log(f"ceiling, {in_flight} in flight")
                        reference = run_ceiling(server.url, in_flight, warmup_s, duration_s, server_cpu, work)
                        log(f"ingest, {workload.name}")
                        tag = f"w{workload.batch}-{time.time_ns()}"
                        measure = uvloop.run(drive(port, ingest.pid, workload, warmup_s, duration_s, tag))
                        rows.append((workload, measure, reference))
                finally:
                    stop_process(ingest)
            if "auth" in only:
                auth = auth_runs(server.url, server_cpu, work, warmup_s, duration_s)
        finally:
            server.stop()
    print(table(rows, auth, args.quick))
    return 0


def table(rows: list[tuple[Workload, Measure, Measure]], auth: dict[str, list[Measure]], quick: bool) -> str:
    """workload, figure, reference, ratio, target; then how the figures were taken."""
    lines = [("workload", "figure (acked readings / ingest CPU s)", "reference", "ratio", "target")]
    notes = []
    for workload, measure, reference in rows:
        ratio = measure.per_cpu_s / reference.per_cpu_s
        target = f">= {TARGET:.0%} {'PASS' if ratio >= TARGET else 'FAIL'}" if workload.batch > 1 else "(report)"
        lines.append(
            (
                workload.name,
                f"{measure.per_cpu_s:,.0f}",
                f"bare nats-py loop {reference.per_cpu_s:,.0f} ({workload.clients * workload.batch} in flight)",
                f"{ratio:.0%}",
                target,
            )
        )
        notes.append(
            f"{workload.name}: ingest {measure.readings / measure.wall_s:,.0f} readings/s at "
            f"{measure.cpu_s / measure.wall_s:.0%} of its CPU; ceiling {reference.readings / reference.wall_s:,.0f}/s "
            f"at {reference.cpu_s / reference.wall_s:.0%}"
        )
    for workload in WORKLOADS:
        off = auth.get(f"{workload.name}/off", [])
        for variant in ("token", "apikey"):
            on = auth.get(f"{workload.name}/{variant}", [])
            if not on and not off:
                continue
            # Compared as CPU per reading (a cost, as in bench.run), shown as readings per CPU second.
            cost = Comparison([m.cpu_per_reading for m in off], [m.cpu_per_reading for m in on])
            lines.append(
                (
                    f"auth, {workload.name}: auth on, {AUTH_VARIANTS[variant]}",
                    f"{1 / cost.on_median:,.0f}",
                    f"auth off {1 / cost.off_median:,.0f}",
                    f"{cost.ratio:.3f}x CPU/reading",
                    f"<= {AUTH_TARGET:g}x auth off {'PASS' if cost.ok else 'FAIL'}",
                )
            )
        if off:
            runs = "; ".join(
                f"{AUTH_VARIANTS[variant]} "
                + " / ".join(f"{m.per_cpu_s:,.0f}" for m in auth.get(f"{workload.name}/{variant}", []))
                for variant in AUTH_VARIANTS
            )
            notes.append(f"auth, {workload.name}: readings / CPU s per run, {runs} (medians of {RUNS} compared)")
    widths = [max(len(line[column]) for line in lines) for column in range(5)]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    text.append("")
    text.extend(f"* {note}" for note in notes)
    text.append(f"* windows of {'2' if quick else '15'} s after a warm-up; CPU from /proc/PID/stat; one CPU each side")
    if auth:
        text.append(
            f"* auth: {RUNS} rounds of off, token and API key, each round starting one later, a fresh ingest service "
            f"each; publish pattern {PUBLISH_PATTERN}, one credential per client"
        )
    return "\n".join(text)


if __name__ == "__main__":
    sys.exit(main())
