"""``telemetry run``: nats-server, the two services and the simulator as child processes, stopped in order.

One uvicorn server per process: two in one process fight over signals (each ``serve()`` installs its own
SIGINT/SIGTERM handlers, restores the previous ones when it ends and raises again the signals it caught, so
one Ctrl-C stops the last server started, which raises it into the other, and ends in a KeyboardInterrupt).
The children run in sessions of their own, so a Ctrl-C reaches only this supervisor, which stops them in
reverse order of start: simulator, stream, ingest, nats-server. On Linux each child also gets SIGTERM
from the kernel if the supervisor dies without cleaning up (even by SIGKILL).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import httpx

from core.settings import ENV_PREFIX, Settings
from telemetry.natsserver import LocalNatsServer, NatsServerError

READY_TIMEOUT_S = 30.0
TICK_S = 0.1
NATS_STOP_S = 10.0
SIMULATOR_STOP_S = 10.0
SERVICE_STOP_MARGIN_S = 5.0
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What ``telemetry run`` adds to the settings: the local nats-server and the simulator."""

    data_dir: Path
    nats_port: int = 4222
    nats_monitor_port: int = 8222
    simulate: int = 0
    rate: float = 1.0


@dataclass(frozen=True, slots=True)
class Child:
    """A started child process and how long it may take to stop after SIGTERM."""

    name: str
    process: subprocess.Popen[bytes]
    stop_timeout_s: float


class StartupFailed(Exception):
    """Something could not start; the message says what, for the user."""


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when we die; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    # prctl is variadic in C: declare the unsigned long arguments, or their upper bits are whatever was there.
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def arrange() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            # The supervisor died between fork and prctl: the signal will never come.
            os._exit(1)

    return arrange


def client_host(host: str) -> str:
    """Where a local client connects to a server listening on ``host`` (a wildcard means loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def describe_exit(returncode: int) -> str:
    """``exited with code 1`` or ``was killed by signal SIGKILL``."""
    if returncode < 0:
        try:
            return f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def check_port(what: str, flag: str, host: str, port: int) -> None:
    """Fail now, with the flag to change, when a port cannot be listened on; better than a child's traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR too: a port with connections in TIME_WAIT is usable, one listened on is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise StartupFailed(
                    f"port {port} ({what}) is already in use on {host}: choose another with {flag}"
                ) from None
            raise StartupFailed(f"cannot listen on {host}:{port} ({what}, {flag}): {err.strerror or err}") from None


class Supervisor:
    """Starts the children, watches them, and stops them all in order on a signal or when one dies."""

    def __init__(
        self, settings: Settings, given: Mapping[str, Any], options: RunOptions, out: TextIO = sys.stdout
    ) -> None:
        self.settings = settings
        self.options = options
        self.out = out
        self.given = given
        self.service_env = {
            **os.environ,
            **{ENV_PREFIX + name.upper(): str(value) for name, value in given.items()},
        }
        self.ingest_url = f"http://{client_host(settings.ingest_host)}:{settings.ingest_port}"
        self.stream_url = f"http://{client_host(settings.stream_host)}:{settings.stream_port}"
        self.children: list[Child] = []
        self.preexec = die_with_parent()
        self.should_exit = False
        self.force_exit = False

    def handle_exit(self, signum: int, frame: FrameType | None) -> None:
        """As uvicorn does: the first signal stops gracefully, a second Ctrl-C kills what is left."""
        if self.should_exit and signum == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True

    def run(self) -> int:
        """Start everything, wait for a signal or a death, stop everything; returns the exit code."""
        previous = {signum: signal.signal(signum, self.handle_exit) for signum in HANDLED_SIGNALS}
        try:
            code = self.start()
            if code is None:
                code = self.watch()
            if self.should_exit:
                self.say("stopping (Ctrl-C again to kill at once)")
        finally:
            self.stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.force_exit:
            self.say("killed what was still running")
            return 128 + signal.SIGINT
        if self.children:
            self.say("stopped")
        return code

    def start(self) -> int | None:
        """Start the children in order; an exit code if that did not happen, None when all are up."""
        service_stop_s = self.settings.shutdown_grace_s + SERVICE_STOP_MARGIN_S
        try:
            self.check_ports()
            self.start_nats()
            self.spawn("ingest", ["ingest"], self.service_env, service_stop_s)
            self.spawn("stream", ["stream"], self.service_env, service_stop_s)
            if not self.wait_ready():
                return 0
            if self.options.simulate > 0:
                simulate = ["simulate", "--devices", str(self.options.simulate), "--rate", f"{self.options.rate:g}"]
                self.spawn("simulate", [*simulate, "--url", self.ingest_url], dict(os.environ), SIMULATOR_STOP_S)
        except StartupFailed as err:
            self.say(f"error: {err}", file=sys.stderr)
            return 1
        self.print_banner()
        return None

    def watch(self) -> int:
        """Tick until a signal (0) or until a child exits on its own (1, naming it)."""
        while not self.should_exit:
            for child in self.children:
                returncode = child.process.poll()
                if returncode is not None:
                    self.say(
                        f"error: {child.name} (pid {child.process.pid}) {describe_exit(returncode)} unexpectedly; "
                        "stopping everything",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(TICK_S)
        return 0

    def check_ports(self) -> None:
        """Every port free and distinct before anything starts, so a clash leaves nothing running."""
        settings, options = self.settings, self.options
        wanted = [
            ("nats-server", "--nats-port", "127.0.0.1", options.nats_port),
            ("nats-server monitoring", "--nats-monitor-port", "127.0.0.1", options.nats_monitor_port),
            ("ingest", "--ingest-port", settings.ingest_host, settings.ingest_port),
            ("stream", "--stream-port", settings.stream_host, settings.stream_port),
        ]
        flags: dict[int, str] = {}
        for what, flag, host, port in wanted:
            if port == 0:
                raise StartupFailed(f"run needs fixed ports to print and check: give {flag} a port number")
            if port in flags:
                raise StartupFailed(f"{flags[port]} and {flag} are both {port}: give each its own port")
            flags[port] = flag
            check_port(what, flag, host, port)

    def start_nats(self) -> None:
        """The local nats-server with JetStream, its store and log under the data directory."""
        data_dir = self.options.data_dir.resolve()
        nats = LocalNatsServer(
            port=self.options.nats_port,
            monitor_port=self.options.nats_monitor_port,
            store_dir=data_dir / "jetstream",
            log_file=data_dir / "nats-server.log",
            start_new_session=True,
            preexec_fn=self.preexec,
        )
        if "nats_urls" in self.given:
            self.say(f"note: --nats-urls is ignored; the services use the nats-server started here, {nats.url}")
        self.say(f"starting nats-server on {nats.url} (store {nats.store_dir}, log {nats.log_file})")
        try:
            nats.start()
        except (NatsServerError, OSError) as err:
            raise StartupFailed(f"nats-server did not start: {err} (see {nats.log_file})") from None
        assert nats.process is not None
        self.children.append(Child("nats-server", nats.process, NATS_STOP_S))
        self.service_env[ENV_PREFIX + "NATS_URLS"] = nats.url

    def spawn(self, name: str, arguments: list[str], env: Mapping[str, str], stop_timeout_s: float) -> None:
        """``python -m telemetry <arguments>`` in its own session, so the terminal's Ctrl-C reaches only us."""
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "telemetry", *arguments],
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=self.preexec,
            )
        except OSError as err:
            raise StartupFailed(f"cannot start {name}: {err}") from None
        self.children.append(Child(name, process, stop_timeout_s))

    def wait_ready(self) -> bool:
        """Poll ``/readyz`` of both services (a subprocess offers nothing to await); False if told to stop."""
        pending = {"ingest": self.ingest_url, "stream": self.stream_url}
        reasons = dict.fromkeys(pending, "not answering yet")
        self.say("waiting for ingest and stream to be ready")
        deadline = time.monotonic() + READY_TIMEOUT_S
        with httpx.Client(timeout=1.0) as client:
            while pending:
                if self.should_exit:
                    return False
                for child in self.children:
                    if child.process.poll() is not None:
                        raise StartupFailed(
                            f"{child.name} {describe_exit(child.process.returncode)} while starting (its log is above)"
                        )
                for name, url in list(pending.items()):
                    try:
                        response = client.get(f"{url}/readyz")
                    except httpx.TransportError as err:
                        reasons[name] = f"{type(err).__name__}"
                        continue
                    if response.status_code == 200:
                        del pending[name]
                    else:
                        reasons[name] = response.text[:200]
                if time.monotonic() > deadline:
                    why = "; ".join(f"{name}: {reasons[name]}" for name in pending)
                    raise StartupFailed(f"not ready within {READY_TIMEOUT_S:g} s: {why}")
                if pending:
                    time.sleep(TICK_S)
        return True

    def print_banner(self) -> None:
        """The URLs to use, ready to paste; the last line lists the children's pids."""
        ingest, stream, options = self.ingest_url, self.stream_url, self.options
        example = '{"site":"lab","device":"probe-1","metric":"temperature","value":21.5,"unit":"°C","id":"probe-1-1"}'
        lines = [
            "",
            "telemetry is running; Ctrl-C stops everything",
            f"  ingest   POST {ingest}/v1/readings",
            f"  stream   GET  {stream}/v1/stream?topic=>",
            f"  dashboard     {stream}/?topic=>",
            f"  metrics       {ingest}/metrics  {stream}/metrics",
            f"  API docs      {ingest}/docs  {stream}/docs",
            f"  nats          nats://127.0.0.1:{options.nats_port}  "
            f"(monitoring http://127.0.0.1:{options.nats_monitor_port})",
            f"  data          {options.data_dir.resolve()}",
        ]
        if options.simulate:
            lines.append(f"  simulating    {options.simulate} devices, {options.rate:g} readings/s each")
        if self.settings.auth == "off":
            lines.append(
                "  WARNING: auth is off: anyone who reaches these ports may post readings and follow every topic "
                f"({ENV_PREFIX}AUTH=required turns it on)"
            )
        lines += self.try_lines(example)
        lines.append("pids: " + " ".join(f"{child.name}={child.process.pid}" for child in self.children))
        self.say("\n".join(lines))

    def try_lines(self, example: str) -> list[str]:
        """Commands to paste; with auth required, with a token (minted from the HS256 secret, when there is one)."""
        ingest, stream = self.ingest_url, self.stream_url
        if self.settings.auth == "off":
            return [
                "try:",
                f"  curl -N '{stream}/v1/stream?topic=>'",
                f"  curl -i -X POST {ingest}/v1/readings -H 'content-type: application/json' -d '{example}'",
                f"  telemetry tail '>' --url {stream}",
            ]
        bearer = '-H "Authorization: Bearer $TOKEN"'
        if self.settings.jwt_secret is not None or self.settings.jwt_secret_file is not None:
            source = [
                f"try (auth is required; in a shell with the same {ENV_PREFIX}JWT_SECRET or its _FILE):",
                "  TOKEN=$(telemetry token --publish '>' --subscribe '>')",
            ]
        else:
            source = ["try (auth is required: TOKEN is a token from your issuer that may publish and follow '>'):"]
        return [
            *source,
            f"  curl -N {bearer} '{stream}/v1/stream?topic=>'",
            f"  curl -i -X POST {ingest}/v1/readings {bearer} -H 'content-type: application/json' -d '{example}'",
            f"  {ENV_PREFIX}TOKEN=$TOKEN telemetry tail '>' --url {stream}",
            "  the dashboard asks for the token once",
        ]

    def stop_all(self) -> None:
        """Stop the children newest first: nothing loses what it depends on while it still works."""
        for child in reversed(self.children):
            self.stop(child)

    def stop(self, child: Child) -> None:
        """SIGTERM, then wait (bounded; a second Ctrl-C cuts it short); SIGKILL if it is still there."""
        process = child.process
        if process.poll() is None and not self.force_exit:
            process.terminate()
            deadline = time.monotonic() + child.stop_timeout_s
            while process.poll() is None and not self.force_exit and time.monotonic() < deadline:
                time.sleep(TICK_S / 2)
            if process.poll() is None and not self.force_exit:
                self.say(f"warning: {child.name} did not stop within {child.stop_timeout_s:g} s; killing it")
        if process.poll() is None:
            process.kill()
        process.wait()

    def say(self, message: str, file: TextIO | None = None) -> None:
        """A line for the user, flushed: stdout may be a pipe (tests, ``| tee``)."""
        print(f"telemetry run: {message}" if "\n" not in message else message, file=file or self.out, flush=True)
