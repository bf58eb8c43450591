"""What a benchmark runs against: NATS, the ingest service, the stream service and the reference servers.

``Lab`` owns every process of a run (through one ``ExitStack``): the nats-server and the ingest
service for the whole run, each measured server for one workload. The project's services are
started exactly as in production, ``python -m telemetry stream|ingest`` with ``TELEMETRY_*``
variables; the references are the scripts in ``bench/servers/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import RETRY_MARKER, HttpClient
from bench.procs import Child, ChildError, children_of, die_with_parent, free_ports, set_affinity
from bench.servers import nchan
from core.settings import Settings
from telemetry.natsserver import LocalNatsServer

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 60.0
# Limits that protect production but would change what is measured: the load comes from one
# address, opens thousands of streams within seconds and must get every event (no conflation).
BENCH_STREAM_SETTINGS = {
    "max_connections": "100000",
    "max_connections_per_client": "100000",
    "max_connects_per_s": "100000",
    "max_rate_per_s": "1000000",
    "max_lifetime_s": "0",
}
REFERENCES = {
    "ceiling": "bench.servers.bare",
    "fastapi": "bench.servers.fastapi_sse",
    "sse-starlette": "bench.servers.sse_starlette_app",
}


@dataclass
class Server:
    """A measured server: its process, its port, and how its subscribers know they are connected."""

    name: str
    child: Child
    port: int
    ready_marker: bytes = RETRY_MARKER
    cpu: int = 0  # the CPU it is pinned to
    publish_port: int | None = None  # where readings are POSTed when not through ingest (Nchan)
    notes: list[str] = field(default_factory=list)

    async def confirm(self, subscribers: int) -> None:
        """Nchan only: wait until it counts every subscriber (its greeting may precede registration)."""
        if self.publish_port is None:
            return
        client = await HttpClient.open(self.publish_port)
        try:
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline:
                client.writer.write(b"GET /pub HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n")
                _status, body = await client.response()
                counted = re.search(rb"active subscribers: (\d+)", body)
                if counted is not None and int(counted[1]) >= subscribers:
                    return
                await asyncio.sleep(0.1)
            raise ChildError(f"nchan did not count {subscribers} subscribers")
        finally:
            await client.close()


def stream_env(overrides: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """``TELEMETRY_*`` variables for the names Settings knows; also says which ones it does not know."""
    known = {name: value for name, value in overrides.items() if name in Settings.model_fields}
    unknown = sorted(set(overrides) - set(known))
    return {f"TELEMETRY_{name.upper()}": value for name, value in known.items()}, unknown


async def poll(check: Callable[[], object], child: Child, what: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Await a condition on a child that offers nothing to await; fail early if the child dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        child.check_alive()
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
        await asyncio.sleep(0.05)
    raise ChildError(f"{child.name}: {what} not within {timeout_s:.0f} s (log: {child.log_path})")


async def get_status(port: int, path: str) -> int:
    """The status of a GET on loopback."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 2.0)
        return int(line.split(b" ", 2)[1])
    finally:
        writer.close()


async def accepts(port: int) -> bool:
    """Whether something listens on the port."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    return True


class Lab:
    """Every process of one benchmark run; everything it starts is stopped by ``stack`` at the end."""

    def __init__(self, stack: contextlib.ExitStack, workdir: Path, server_cpu: int) -> None:
        self.stack = stack
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.server_cpu = server_cpu
        self.nats_url = ""
        self.ingest_port = 0
        self.ingest: Child | None = None
        self.nats: LocalNatsServer | None = None
        self.stream_env, self.unknown_settings = stream_env(BENCH_STREAM_SETTINGS)
        self._started = 0

    def _child(
        self, name: str, argv: list[str], *, pinned: bool, env: dict[str, str] | None = None, cwd: Path = REPO
    ) -> Child:
        self._started += 1
        child = Child(
            f"{self._started:02d}-{name}",
            argv,
            log_dir=self.logs,
            cpu=self.server_cpu if pinned else None,
            env=env,
            cwd=cwd,
        )
        self.stack.callback(child.stop)
        return child.start()

    def start_nats(self) -> None:
        """A nats-server with JetStream for the whole run, on the load generator's CPU (inherited)."""
        port, monitor = free_ports(2)
        self.nats = LocalNatsServer(
            port=port,
            monitor_port=monitor,
            store_dir=self.workdir / "nats",
            log_file=self.logs / "nats-server.log",
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.stack.callback(self.nats.stop)
        self.nats.start()
        self.nats_url = self.nats.url

    def service_env(self) -> dict[str, str]:
        """What both services share: NATS, quiet JSON logs."""
        return {
            "TELEMETRY_NATS_URLS": self.nats_url,
            "TELEMETRY_LOG_LEVEL": "warning",
            "TELEMETRY_LOG_FORMAT": "json",
        }

    async def start_ingest(self) -> None:
        """The ingest service for the whole run, on the load generator's CPU: it is not what is measured."""
        (self.ingest_port,) = free_ports(1)
        env = {**self.service_env(), "TELEMETRY_INGEST_PORT": str(self.ingest_port)}
        self.ingest = self._child("ingest", [sys.executable, "-m", "telemetry", "ingest"], pinned=False, env=env)
        await poll(lambda: self._ready(self.ingest_port), self.ingest, "ready (/readyz 200)")

    async def _ready(self, port: int) -> bool:
        return await get_status(port, "/readyz") == 200

    async def start_stream(
        self, settings: dict[str, str] | None = None, name: str = "stream", checkout: Path = REPO
    ) -> Server:
        """The stream service, pinned to the server CPU, with the limits that would distort the load lifted, and
        ``settings`` (``Settings`` field names: the auth workload's) besides; the one of ``checkout`` (a directory
        with this project's ``telemetry/``: bench.sidebyside compares two)."""
        (port,) = free_ports(1)
        extra, unknown = stream_env(settings or {})
        if unknown:
            raise ChildError(f"settings the stream service does not know: {', '.join(unknown)}")
        env = {**self.service_env(), **self.stream_env, **extra, "TELEMETRY_STREAM_PORT": str(port)}
        child = self._child(name, [sys.executable, "-m", "telemetry", "stream"], pinned=True, env=env, cwd=checkout)
        await poll(lambda: self._ready(port), child, "ready (/readyz 200)")
        return Server(name, child, port, cpu=self.server_cpu)

    async def start_reference(self, name: str) -> Server:
        """One of the Python references, pinned to the server CPU, fed by its own NATS subscription."""
        (port,) = free_ports(1)
        argv = [sys.executable, "-m", REFERENCES[name], "--port", str(port), "--nats-url", self.nats_url]
        argv += ["--subject", "telemetry.>"]
        child = self._child(name, argv, pinned=True)
        await poll(lambda: accepts(port), child, "listening")
        return Server(name, child, port, cpu=self.server_cpu)

    async def start_nchan(self) -> Server:
        """nginx with Nchan (master and one worker, both pinned); the worker is what is measured."""
        (port,) = free_ports(1)
        argv = [sys.executable, "-m", "bench.servers.nchan", "--port", str(port), "--dir", str(self.workdir / "nchan")]
        child = self._child("nchan", argv, pinned=True)
        await poll(lambda: accepts(port), child, "listening")
        await poll(lambda: len(children_of(child.pid)) == 1, child, "one nginx worker")
        child.measured_pid = children_of(child.pid)[0]
        return Server("nchan", child, port, cpu=self.server_cpu, ready_marker=b": hi", publish_port=port)

    @contextlib.contextmanager
    def helpers_on(self, cpus: set[int]) -> Iterator[None]:
        """Let ingest and nats-server run on ``cpus`` for a while (they are pinned to the load CPU otherwise)."""
        assert self.ingest is not None and self.nats is not None and self.nats.process is not None
        pids = [self.ingest.pid, self.nats.process.pid]
        before = os.sched_getaffinity(pids[0])
        for pid in pids:
            set_affinity(pid, cpus)
        try:
            yield
        finally:
            for pid in pids:
                set_affinity(pid, before)

    @staticmethod
    def nchan_available() -> bool:
        """Whether nginx and the Nchan module are installed."""
        return nchan.available()

    @staticmethod
    def stop(server: Server) -> None:
        """Stop one measured server now (the stack would only at the end)."""
        server.child.stop()
