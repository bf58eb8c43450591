"""``telemetry run`` end to end: a real supervisor process, its children, and what is left after it stops."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse
from support.auth import SECRET
from support.net import free_port

from core.settings import Settings
from telemetry.supervisor import Child, RunOptions, Supervisor

STARTUP_S = 60.0
READING = {"site": "lab", "device": "probe-1", "metric": "temperature", "value": 21.5}
STOP_S = 60.0
EVENTS_S = 30.0


@dataclass
class Run:
    """A running ``telemetry run`` and what it printed before it was up."""

    process: asyncio.subprocess.Process
    banner: list[str]
    log: Path

    @property
    def pids(self) -> dict[str, int]:
        """The children's pids from the banner's last line (``pids: nats-server=1 ingest=2 ...``)."""
        last = self.banner[-1] if self.banner else ""
        if not last.startswith("pids: "):
            return {}
        return {name: int(pid) for name, pid in (item.split("=") for item in last.removeprefix("pids: ").split())}

    def url(self, service: str) -> str:
        line = next(line for line in self.banner if line.split()[:1] == [service])
        return line.split()[2]

    async def exit_code(self) -> int:
        async with asyncio.timeout(STOP_S):
            return await self.process.wait()


def alive(pid: int) -> bool:
    """Whether a process still runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def session_of(pid: int) -> int:
    """The session id from /proc (the sixth field of stat, the fourth after the command name)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])


def children_of(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


async def all_gone(pids: list[int], within_s: float) -> bool:
    """Poll /proc with a deadline: processes that are not ours to wait for offer nothing to await."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while any(alive(pid) for pid in pids):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@asynccontextmanager
async def telemetry_run(tmp_path: Path, *arguments: str) -> AsyncIterator[Run]:
    """Start ``telemetry run`` on free ports; read its stdout until the banner ends; never leave a process."""
    ports = [str(free_port()) for _ in range(4)]
    log = tmp_path / "run.log"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "telemetry", "run", "--data-dir", str(tmp_path / "data"), "--log-format", "json"],
            *["--nats-port", ports[0], "--nats-monitor-port", ports[1]],
            *["--ingest-port", ports[2], "--stream-port", ports[3], *arguments],
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,  # a process group of its own, as a shell gives a foreground job
        )
    assert process.stdout is not None
    run = Run(process, [], log)
    try:
        async with asyncio.timeout(STARTUP_S):
            while not run.pids and (line := await process.stdout.readline()):
                run.banner.append(line.decode().rstrip("\n"))
        yield run
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for pid in run.pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_run_streams_simulated_readings_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    async with telemetry_run(tmp_path, "--simulate", "2", "--rate", "5", "--retry-ms", "300") as run:
        pids = run.pids
        assert list(pids) == ["nats-server", "ingest", "stream", "simulate"]
        assert children_of(run.process.pid) == set(pids.values())
        assert all(session_of(pid) == pid for pid in pids.values())  # out of reach of the terminal's Ctrl-C
        stream_url = run.url("stream")
        assert stream_url.endswith("/v1/stream?topic=>")
        assert f"  curl -N '{stream_url}'" in run.banner

        devices: set[str] = set()
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=EVENTS_S)) as client,
            aconnect_sse(client, "GET", stream_url) as source,
            asyncio.timeout(EVENTS_S),
        ):
            events = source.aiter_sse()
            assert (await anext(events)).retry == 300  # the flag reached the stream service
            async for event in events:
                if event.event == "reading":
                    devices.add(event.json()["device"])
                if len(devices) == 2:
                    break
        assert devices == {"dev-01", "dev-02"}
        (dashboard,) = [line.split()[1] for line in run.banner if line.split()[:1] == ["dashboard"]]  # the page
        assert dashboard == stream_url.replace("/v1/stream?", "/?")
        async with httpx.AsyncClient() as client:
            page = await client.get(dashboard)
        assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")

        os.killpg(run.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        assert await run.exit_code() == 0

    assert not [name for name, pid in pids.items() if alive(pid)]
    log = run.log.read_text()
    assert log.index(f"Finished server process [{pids['stream']}]") < log.index(
        f"Finished server process [{pids['ingest']}]"
    )


async def test_with_auth_required_the_banner_says_how_to_get_a_token_and_its_commands_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TELEMETRY_AUTH", "required")
    monkeypatch.setenv("TELEMETRY_JWT_SECRET", SECRET)
    async with telemetry_run(tmp_path) as run:
        assert "  TOKEN=$(telemetry token --publish '>' --subscribe '>')" in run.banner
        assert not [line for line in run.banner if "auth is off" in line]
        minting = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "telemetry", "token", "--publish", ">", "--subscribe", ">"],
            stdout=asyncio.subprocess.PIPE,
        )
        token, _ = await minting.communicate()
        headers = {"Authorization": f"Bearer {token.decode().strip()}"}
        (post,) = [line for line in run.banner if "curl -i -X POST" in line]
        assert '-H "Authorization: Bearer $TOKEN"' in post
        async with httpx.AsyncClient(timeout=10.0) as client:
            refused = await client.post(run.url("ingest"), json=READING)
            stored = await client.post(run.url("ingest"), json=READING, headers=headers)
            async with client.stream("GET", run.url("stream"), headers=headers) as stream:
                followed = stream.status_code
    assert (refused.status_code, stored.status_code, followed) == (401, 202, 200)


async def test_the_services_use_the_nats_server_run_started_whatever_nats_urls_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither the flag nor the variable names a server here: were either passed on, nothing would get ready."""
    monkeypatch.setenv("TELEMETRY_NATS_URLS", f"nats://127.0.0.1:{free_port()}")
    async with telemetry_run(tmp_path, "--nats-urls", f"nats://127.0.0.1:{free_port()}") as run:
        assert run.pids, "\n".join(run.banner)
        (local,) = [line.split()[1] for line in run.banner if line.split()[:1] == ["nats"]]
        assert (
            f"telemetry run: note: --nats-urls is ignored; the services use the nats-server started here, {local}"
            in run.banner
        )
        os.killpg(run.process.pid, signal.SIGINT)
        assert await run.exit_code() == 0


async def test_a_child_that_dies_stops_everything_and_is_named(tmp_path: Path) -> None:
    async with telemetry_run(tmp_path) as run:
        pids = run.pids
        os.kill(pids["ingest"], signal.SIGKILL)

        assert await run.exit_code() == 1

    assert not [name for name, pid in pids.items() if alive(pid)]
    assert f"ingest (pid {pids['ingest']}) was killed by signal SIGKILL unexpectedly" in run.log.read_text()


async def test_children_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    async with telemetry_run(tmp_path, "--simulate", "1") as run:
        pids = run.pids
        run.process.kill()
        await run.exit_code()

        assert await all_gone(list(pids.values()), within_s=STOP_S)


async def test_a_port_in_use_is_named_and_nothing_is_started(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with telemetry_run(tmp_path, "--stream-port", str(port)) as run:
            assert await run.exit_code() == 1

    assert run.pids == {}
    assert f"port {port} (stream) is already in use on 127.0.0.1: choose another with --stream-port" in (
        run.log.read_text()
    )
    assert not (tmp_path / "data").exists()


def sleeper(ignore_sigterm: bool) -> subprocess.Popen[bytes]:
    """A child that stays up; with ``ignore_sigterm`` only SIGKILL stops it."""
    code = "import signal, sys, time\n"
    if ignore_sigterm:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('up', flush=True)\ntime.sleep(60)\n"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None
    with process.stdout:
        assert process.stdout.readline() == b"up\n"
    return process


def test_a_child_that_ignores_sigterm_is_killed_after_its_timeout(tmp_path: Path) -> None:
    out = io.StringIO()
    supervisor = Supervisor(Settings(), {}, RunOptions(data_dir=tmp_path), out=out)
    stubborn = sleeper(ignore_sigterm=True)

    supervisor.stop(Child("stubborn", stubborn, stop_timeout_s=0.3))

    assert stubborn.returncode == -signal.SIGKILL
    assert "stubborn did not stop within 0.3 s; killing it" in out.getvalue()


def test_a_second_ctrl_c_kills_at_once(tmp_path: Path) -> None:
    supervisor = Supervisor(Settings(), {}, RunOptions(data_dir=tmp_path), out=io.StringIO())
    first, second = sleeper(ignore_sigterm=True), sleeper(ignore_sigterm=True)
    supervisor.children += [Child("first", first, stop_timeout_s=60), Child("second", second, stop_timeout_s=60)]

    supervisor.handle_exit(signal.SIGINT, None)
    assert supervisor.should_exit and not supervisor.force_exit
    supervisor.handle_exit(signal.SIGINT, None)
    started = time.monotonic()
    supervisor.stop_all()

    assert time.monotonic() - started < 5
    assert supervisor.force_exit
    assert first.returncode == second.returncode == -signal.SIGKILL


def test_sigterm_twice_still_stops_gracefully(tmp_path: Path) -> None:
    supervisor = Supervisor(Settings(), {}, RunOptions(data_dir=tmp_path), out=io.StringIO())

    supervisor.handle_exit(signal.SIGTERM, None)
    supervisor.handle_exit(signal.SIGTERM, None)

    assert supervisor.should_exit and not supervisor.force_exit


@pytest.mark.parametrize(("auth", "warned"), [("off", True), ("required", False)])
def test_the_banner_warns_in_one_line_when_auth_is_off(auth: str, warned: bool, tmp_path: Path) -> None:
    out = io.StringIO()
    settings = Settings(auth=auth, jwt_secret="a-secret-of-at-least-32-bytes-0123456789")
    Supervisor(settings, {}, RunOptions(data_dir=tmp_path), out=out).print_banner()
    warnings = [line for line in out.getvalue().splitlines() if "WARNING: auth is off" in line]
    assert len(warnings) == (1 if warned else 0)
    assert all("TELEMETRY_AUTH=required" in line for line in warnings)
