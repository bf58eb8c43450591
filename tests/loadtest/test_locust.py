"""The Locust load test (loadtest/): its SSE reader, a short clean run with a reconnect storm, and a lossy one.

Locust monkey-patches the standard library with gevent when imported, so nothing of loadtest/ that
imports gevent is imported here: Locust and the SSE reader run as subprocesses, from the repository
root (where ``loadtest`` is importable), against a platform started with ``telemetry run``.
"""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.net import free_port, wait_for_readyz

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
STOP_S = 30.0
LOCUST_MARGIN_S = 60.0  # beyond the run time: start-up, stopping users, writing reports
LINE_TIMEOUT_S = 5.0


def distinct_free_ports(count: int) -> list[int]:
    """``count`` free ports, no two alike (``telemetry run`` refuses a port given twice)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``telemetry run`` with the settings ``python -m loadtest.run`` uses: no conflation, no per-client cap."""
    data_dir = tmp_path_factory.mktemp("platform")
    nats, monitor, ingest_port, stream_port = distinct_free_ports(4)
    command = [sys.executable, "-m", "telemetry", "run", "--data-dir", str(data_dir), "--nats-port", str(nats)]
    command += ["--nats-monitor-port", str(monitor), "--ingest-port", str(ingest_port)]
    command += ["--stream-port", str(stream_port), "--max-rate-per-s", "1000000"]
    command += ["--max-connections-per-client", "100000"]
    with (data_dir / "run.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ingest, stream = f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{stream_port}"
    try:
        asyncio.run(wait_for_readyz(ingest))
        asyncio.run(wait_for_readyz(stream))
        yield ingest, stream
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.returncode == 0, (data_dir / "run.log").read_text()[-4000:]


def run_locust(platform: tuple[str, str], out: Path, run_time_s: int, *options: str) -> tuple[int, str, dict[str, Any]]:
    """Locust headless for ``run_time_s``: its exit code, its output, and the summary it wrote."""
    ingest, stream = platform
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"]
    command += ["-t", f"{run_time_s}s", "-H", ingest, "--stream-url", stream, "--csv", str(out / "run")]
    command += ["--summary-json", str(out / "summary.json"), *options]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=run_time_s + LOCUST_MARGIN_S, check=False
    )
    output = done.stdout + done.stderr
    assert (out / "summary.json").exists(), output[-4000:]
    return done.returncode, output, json.loads((out / "summary.json").read_text())


def csv_rows(path: Path) -> dict[str, dict[str, str]]:
    """Locust's stats CSV by request name (``Aggregated`` for the total)."""
    with path.open(newline="") as file:
        return {row["Name"]: row for row in csv.DictReader(file)}


def test_reconnect_storm_loses_nothing(platform: tuple[str, str], tmp_path: Path) -> None:
    """Devices post singly and in batches; mid-run every dashboard drops and resumes with Last-Event-ID."""
    code, output, summary = run_locust(
        platform,
        tmp_path,
        30,
        *("--shape", "storm", "--storm-at-s", "15", "--devices", "8", "--dashboards", "4", "--sites", "2"),
        *("--device-rate", "4", "--batch-size", "5", "--batch-share", "0.3"),
    )
    counted = summary["counters"]
    assert code == 0, output[-4000:]
    assert summary["ok"] is True
    assert summary["failures"] == 0
    assert (counted["gaps"], counted["missing"], counted["duplicates"], counted["resets"]) == (0, 0, 0, 0)
    assert counted["readings_posted"] > 0 and summary["posts"] > 0
    assert summary["events"] > 0
    # The storm happened and was survived: every dashboard dropped, resumed, and got what it missed.
    assert counted["storms"] == 1 and counted["storm_drops"] == 4
    assert counted["resumes"] >= 4
    assert summary["replayed"] > 0
    # Every reading reached both dashboards of its site (2 sites, 4 dashboards), but for the last moments.
    assert summary["events"] + summary["replayed"] >= 2 * counted["readings_posted"] * 0.9

    rows = csv_rows(tmp_path / "run_stats.csv")
    assert rows["Aggregated"]["Failure Count"] == "0"
    assert int(rows["reading"]["Request Count"]) > 0
    assert int(rows["/v1/readings"]["Request Count"]) > 0 and int(rows["/v1/readings (batch)"]["Request Count"]) > 0
    with (tmp_path / "run_failures.csv").open(newline="") as file:
        assert list(csv.DictReader(file)) == []


def test_conflated_readings_are_counted_as_gaps(platform: tuple[str, str], tmp_path: Path) -> None:
    """A dashboard asking for fewer readings than arrive loses some to conflation: the run must say so and fail."""
    code, output, summary = run_locust(
        platform,
        tmp_path,
        8,
        *("--devices", "4", "--dashboards", "1", "--sites", "1", "--site-prefix", "conflated"),
        *("--device-rate", "10", "--batch-share", "0", "--dashboard-rate", "4"),
    )
    counted = summary["counters"]
    assert code == 1, output[-4000:]
    assert summary["ok"] is False
    assert counted["gaps"] > 0 and counted["missing"] > 0
    assert summary["failures"] >= counted["gaps"]
    assert "gap: " in output


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked HTTP/1.1 body, as uvicorn sends each write of a stream."""
    return b"%x\r\n%s\r\n" % (len(data), data)


async def test_reader_hands_over_each_event_as_it_arrives(tmp_path: Path) -> None:
    """Each event is printed before the server sends the next: no read-ahead buffer holds small events back.

    The server below writes an event, then waits until the reader (``python -m loadtest.sse``, the code
    the dashboards use) has printed it; a reader that waited for 1 KiB would never print it.
    """
    frames: list[tuple[bytes, list[tuple[str | None, str, str]]]] = [
        (b'retry: 1500\n\nid: 1\nevent: reading\ndata: {"n":1}\n\n', [("1", "reading", '{"n":1}')]),
        (b": keep-alive\n\n", []),
        (b'id: 2\nevent: reading\ndata: {"n"', []),  # half a line: nothing to hand over yet
        (b":2}\n\n", [("2", "reading", '{"n":2}')]),
        (
            b"id: 3\r\nevent: reading\r\ndata: a\r\ndata: b\r\n\r\nevent: end\ndata: {}\n\n",
            [("3", "reading", "a\nb"), (None, "end", "{}")],
        ),
    ]
    served = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            for data, expected in frames:
                writer.write(chunk(data))
                await writer.drain()
                for event_id, event, data_ in expected:
                    line = await asyncio.wait_for(client.stdout.readline(), LINE_TIMEOUT_S)  # type: ignore[union-attr]
                    printed = json.loads(line)
                    assert (printed["id"], printed["event"], printed["data"]) == (event_id, event, data_)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            served.set_result(None)
        except BaseException as err:
            served.set_exception(err)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "loadtest.sse", f"http://127.0.0.1:{port}", "site1.>"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            await served
            assert await client.wait() == 0
            assert await client.stdout.read() == b""  # type: ignore[union-attr]
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
        server.close()
        await server.wait_closed()
