"""A nats-server of one test's own, which the test may pause, resume, stop and start again."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from support.net import free_port

from telemetry.natsserver import LocalNatsServer

PAUSE_TIMEOUT_S = 10.0
STOPPED_STATES = {"T", "t"}


def thread_states(pid: int) -> list[str]:
    """The scheduler state of every thread of a process (``/proc/PID/task/*/stat``: R, S, T, ...)."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            text = stat.read_text()
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
        # "tid (comm) state ...": the command name may hold spaces and parentheses, the state follows the last ")".
        states.append(text[text.rindex(")") + 2])
    return states


class StoppableNatsServer(LocalNatsServer):
    """A LocalNatsServer that a test may freeze (SIGSTOP) to make acknowledgements time out."""

    def pause(self) -> None:
        """Freeze the server: connections stay open, nothing is answered.

        SIGSTOP stops a process's threads one after the other, not at once: until the last one is stopped
        the server may still answer. Returns once every thread is stopped.
        """
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        while not set(thread_states(self.process.pid)) <= STOPPED_STATES:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server {self.process.pid} was not stopped within {PAUSE_TIMEOUT_S:g} s")
            time.sleep(0.001)

    def resume(self) -> None:
        """Let a paused server run again; it then processes what it received meanwhile."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)


class AuthNatsServer(StoppableNatsServer):
    """A nats-server with options of its own: ``--user``/``--pass``, ``--auth`` (a token), or ``-c`` a config file
    (TLS, NKEY users, operator mode)."""

    def __init__(self, tmp_path: Path, *auth: str) -> None:
        super().__init__(port=free_port(), monitor_port=free_port(), store_dir=tmp_path / "nats-store")
        self.auth = list(auth)

    def command(self) -> list[str]:
        return [*super().command(), *self.auth]
