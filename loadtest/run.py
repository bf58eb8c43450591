"""``make loadtest``: a local platform on free ports, a bounded headless Locust run against it, a summary.

``python -m loadtest.run [--run-time-s 60] [--reports-dir loadtest/reports] [LOCUST OPTIONS...]``

Starts ``python -m telemetry run`` in a temporary data directory, with the per-connection rate limit
raised so that no reading conflates (a conflated reading would count as a gap) and the per-client
connection cap raised (every dashboard comes from 127.0.0.1). Runs Locust headless with CSV and HTML
reports into a new directory under the reports directory, stops the platform and prints the summary.
Any other option is passed to Locust (``--shape storm``, ``--devices 200``...).

Both children run in sessions of their own: a Ctrl-C reaches only this runner, which stops Locust
first (it still writes its reports), then the platform; a second Ctrl-C kills both at once. If the
runner itself is killed, the kernel sends them SIGTERM (``telemetry.supervisor.die_with_parent``).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO

import httpx

from loadtest.summary import Summary
from telemetry.supervisor import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
DEFAULT_REPORTS_DIR = ROOT / "loadtest" / "reports"
# Settings of the platform under test: no conflation, no per-client cap (see the module docstring).
PLATFORM_FLAGS = ("--max-rate-per-s", "1000000", "--max-connections-per-client", "100000")
READY_TIMEOUT_S = 60.0
LOCUST_MARGIN_S = 60.0  # beyond --run-time-s: start-up, stopping users, writing reports
LOCUST_STOP_S = 20.0
PLATFORM_STOP_S = 30.0
TICK_S = 0.1


class RunFailed(Exception):
    """The platform or Locust could not run; the message says why."""


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now, all different (held open together until all are chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Runner:
    """Owns the two child processes; stops them newest first however the run ends."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes], float]] = []
        self.stopping = False
        self.interrupted = False
        self.forced = False

    def handle_signal(self, signum: int, frame: FrameType | None) -> None:
        """First Ctrl-C (or SIGTERM): stop in order, Locust first; a second Ctrl-C: kill now."""
        if self.stopping:
            self.forced = True
            for _name, process, _timeout in self.children:
                if process.poll() is None:
                    process.kill()
            return
        self.stopping = self.interrupted = True
        say("stopping (Ctrl-C again to kill at once)")
        for name, process, _timeout in reversed(self.children):
            if name == "locust" and process.poll() is None:
                process.send_signal(signal.SIGINT)

    def spawn(
        self,
        name: str,
        command: list[str],
        stop_timeout_s: float,
        stdout: IO[bytes] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a child in its own session, so the terminal's Ctrl-C reaches only us."""
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self.children.append((name, process, stop_timeout_s))
        return process

    def stop_all(self) -> None:
        """SIGINT newest first (both stop cleanly on it), bounded waits, then SIGKILL."""
        for name, process, timeout_s in reversed(self.children):
            if process.poll() is None and not self.forced:
                process.send_signal(signal.SIGINT)
                deadline = time.monotonic() + timeout_s
                while process.poll() is None and not self.forced and time.monotonic() < deadline:
                    time.sleep(TICK_S)
                if process.poll() is None:
                    say(f"{name} did not stop within {timeout_s:g} s; killing it")
            if process.poll() is None:
                process.kill()
            process.wait()

    def wait_ready(self, platform: subprocess.Popen[bytes], urls: Sequence[str], log: Path) -> None:
        """Poll both services' /readyz (a child process offers nothing to await) until 200, with a deadline."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = list(urls)
        with httpx.Client(timeout=1.0) as client:
            while pending:
                if self.stopping:
                    raise RunFailed("stopped before the platform was ready")
                if platform.poll() is not None:
                    raise RunFailed(f"the platform exited with code {platform.returncode} while starting (see {log})")
                if time.monotonic() > deadline:
                    raise RunFailed(f"the platform was not ready within {READY_TIMEOUT_S:g} s (see {log})")
                try:
                    if client.get(f"{pending[0]}/readyz").status_code == 200:
                        pending.pop(0)
                        continue
                except httpx.TransportError:
                    pass  # still starting
                time.sleep(TICK_S)

    def wait_locust(self, locust: subprocess.Popen[bytes], within_s: float) -> int:
        """Locust's exit code; past the deadline it is told to stop (its reports still get written)."""
        deadline = time.monotonic() + within_s
        while locust.poll() is None:
            if time.monotonic() > deadline and not self.stopping:
                say(f"locust still runs {within_s:g} s after it started; stopping it")
                self.stopping = True
                locust.send_signal(signal.SIGINT)
                deadline = time.monotonic() + LOCUST_STOP_S
            elif time.monotonic() > deadline:
                locust.kill()
            time.sleep(TICK_S)
        return locust.returncode


def say(message: str) -> None:
    """A line for the user, flushed before Locust's own output."""
    print(f"loadtest: {message}", flush=True)


def run(run_time_s: float, reports_dir: Path, locust_args: Sequence[str]) -> int:
    """Start the platform, run Locust, stop everything; the exit code is Locust's (1 on any loss)."""
    out = reports_dir / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    summary_path, platform_log = out / "summary.json", out / "platform.log"
    runner = Runner()
    previous = {signum: signal.signal(signum, runner.handle_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with tempfile.TemporaryDirectory(prefix="telemetry-loadtest-") as data_dir, platform_log.open("wb") as log:
            nats, monitor, ingest_port, stream_port = free_ports(4)
            ingest, stream = f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{stream_port}"
            command = [sys.executable, "-m", "telemetry", "run", "--data-dir", data_dir, "--nats-port", str(nats)]
            command += ["--nats-monitor-port", str(monitor), "--ingest-port", str(ingest_port)]
            command += ["--stream-port", str(stream_port), *PLATFORM_FLAGS]
            say(f"starting the platform (ingest {ingest}, stream {stream}; log {platform_log})")
            platform = runner.spawn("platform", command, PLATFORM_STOP_S, stdout=log)
            try:
                runner.wait_ready(platform, [ingest, stream], platform_log)
                locust = runner.spawn(
                    "locust",
                    [
                        *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"),
                        *("-t", f"{run_time_s:g}s", "-H", ingest, "--stream-url", stream),
                        *("--csv", str(out / "run"), "--html", str(out / "report.html")),
                        *("--summary-json", str(summary_path), *locust_args),
                    ],
                    LOCUST_STOP_S,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
                code = runner.wait_locust(locust, run_time_s + LOCUST_MARGIN_S)
            finally:
                runner.stop_all()
    except RunFailed as err:
        say(f"error: {err}")
        return 128 + signal.SIGINT if runner.interrupted else 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not summary_path.exists():
        say(f"locust exited with code {code} and wrote no summary (its output is above)")
        return code or 1
    print("\n".join(Summary.read(summary_path).lines()))
    say(f"reports: {out}/ (report.html, run_stats.csv, run_failures.csv, summary.json, platform.log)")
    return 128 + signal.SIGINT if runner.interrupted else code


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: the runner's two options, everything else for Locust."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.run",
        description="Run the Locust load test headless against a platform started here; other options go to Locust.",
        epilog="e.g. python -m loadtest.run --run-time-s 120 --shape storm --devices 100 --dashboards 50 --sites 10",
    )
    parser.add_argument("--run-time-s", type=float, default=60.0, help="how long Locust runs (default 60)")
    parser.add_argument("--reports-dir", type=Path, default=DEFAULT_REPORTS_DIR, help="where each run's directory goes")
    args, locust_args = parser.parse_known_args(argv)
    return run(args.run_time_s, args.reports_dir, locust_args)


if __name__ == "__main__":
    sys.exit(main())
