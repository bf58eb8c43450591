"""The processes a benchmark starts: pinned children, their CPU time and memory, and their clean end.

Every child is started with ``taskset -c CPU`` (or inherits the runner's own CPU), dies with the
runner (``PR_SET_PDEATHSIG``) even if the runner is killed, and is terminated and reaped by the
``ExitStack`` that started it, also on errors and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from telemetry.processes import stop_process as stop_within

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
INTERFERENCE = 0.25  # other work on the server CPU, as a share of the server's own, worth a note
PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_S = 10.0


class ChildError(RuntimeError):
    """A child process died or did not become ready."""


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; children started afterwards inherit it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def pin_self(cpu: int) -> None:
    """Run this process (the load generator) on one CPU only."""
    os.sched_setaffinity(0, {cpu})


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Move every thread of a running process (nats-server has many) to ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(task.name), cpus)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on loopback right now (all held open together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM it when the runner dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a grace period; always reaped."""
    stop_within(process, STOP_TIMEOUT_S)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from ``/proc/PID/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def cpu_busy_s(cpu: int) -> float:
    """Busy seconds of one CPU so far (all processes, interrupts included), from ``/proc/stat``."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in line.split()[1:9])
            return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS_PER_S
    raise ChildError(f"no cpu{cpu} in /proc/stat")


def pinned_cpu(pid: int) -> int | None:
    """The one CPU a process may run on (``taskset -c N``), or None when it may run on several."""
    cpus = os.sched_getaffinity(pid)
    return next(iter(cpus)) if len(cpus) == 1 else None


def proc_memory_kb(pid: int, name: str = "VmRSS") -> int:
    """A memory figure of ``/proc/PID/status`` in KiB: ``VmRSS`` (resident now) or ``VmHWM`` (the most resident yet)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise ChildError(f"no {name} for pid {pid}")


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (``/proc/PID/task/TID/children`` is not in every kernel)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


class Child:
    """One child process, optionally pinned to a CPU, with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        cpu: int | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = ["taskset", "-c", str(cpu), *argv] if cpu is not None else list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.measured_pid: int | None = None  # another process to measure (nginx's worker), else this one

    @property
    def pid(self) -> int:
        """The pid whose CPU and memory count: taskset execs the command, so by default the one we started."""
        if self.measured_pid is not None:
            return self.measured_pid
        assert self.process is not None
        return self.process.pid

    def start(self) -> Child:
        """Start the process; its stdout and stderr go to the log file."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # Ctrl-C reaches the runner only; it stops the children in order
                preexec_fn=die_with_parent,
            )
        return self

    def check_alive(self) -> None:
        """Raise with the tail of the log if the process has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise ChildError(f"{self.name} exited with code {self.process.returncode}; log tail:\n{tail}")

    def cpu_s(self) -> float:
        """CPU seconds used so far."""
        return proc_cpu_s(self.pid)

    def rss_kb(self) -> int:
        """Resident memory now."""
        return proc_memory_kb(self.pid)

    def peak_rss_kb(self) -> int:
        """The most resident memory it has had."""
        return proc_memory_kb(self.pid, "VmHWM")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; always reaped."""
        if self.process is not None:
            stop_process(self.process)
