"""``telemetry tail`` against a real stream service: prints readings, resumes after a drop without a gap, and
ends quietly when its reader goes away or on Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import nats
import pytest
from support.auth import SECRET
from support.net import free_port
from support.pipes import piped
from support.sse import Serve

from core.jetstream import ensure_stream
from core.readings import Reading, stored_payload
from core.settings import Settings
from core.topics import Pattern, Subjects
from stream.app import create_app
from telemetry.cli import BROKEN_PIPE_EXIT
from telemetry.credentials import CommandAuth
from telemetry.tail import Tail, TailOptions, follow_until, reading_line

WAIT_S = 20.0


class Lines(io.StringIO):
    """Tail's stdout: each complete line goes into a queue the test awaits."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.all: list[str] = []

    def write(self, text: str) -> int:
        for line in text.splitlines():
            self.queue.put_nowait(line)
            self.all.append(line)
        return len(text)

    async def next(self) -> str:
        async with asyncio.timeout(WAIT_S):
            return await self.queue.get()


async def publish(settings: Settings, values: list[float]) -> list[int]:
    """Store readings straight in JetStream, as the ingest service would; returns their sequences."""
    nc = await nats.connect(settings.nats_urls)
    try:
        js = nc.jetstream()
        await ensure_stream(js, settings)
        seqs = []
        for value in values:
            reading = Reading(site="lab", device="probe-1", metric="temperature", value=value, unit="°C")
            subject = Subjects(settings.subject_prefix).for_topic(reading.topic)
            ack = await js.publish(subject, stored_payload(reading, datetime.now(UTC)), stream=settings.stream_name)
            seqs.append(ack.seq)
        return seqs
    finally:
        await nc.close()


def seq_of(line: str) -> int:
    return int(line.split()[0])


@asynccontextmanager
async def tailing(options: TailOptions, out: Lines, err: io.StringIO) -> AsyncIterator[Tail]:
    tail = Tail(options, out=out, err=err)
    stop = asyncio.Event()
    task = asyncio.create_task(follow_until(tail, stop))
    try:
        yield tail
    finally:
        stop.set()
        assert await task == 0


def test_a_reading_is_one_line_with_seq_topic_value_and_unit() -> None:
    data = json.dumps({"seq": 7, "topic": "lab.probe-1.temperature", "value": 21.5, "unit": "°C"})

    assert reading_line(data).split() == ["7", "lab.probe-1.temperature", "21.5", "°C"]


async def test_tail_resumes_after_a_dropped_connection_without_a_gap(
    make_settings: Callable[..., Settings], serve: Serve
) -> None:
    settings = make_settings(retry_ms=200, retry_after_s=1)
    first = await publish(settings, [20.0, 20.5, 21.0])
    port = free_port()
    out, err = Lines(), io.StringIO()
    options = TailOptions(url=f"http://127.0.0.1:{port}", patterns=("lab.*.temperature",), last_event_id="0")

    async with contextlib.AsyncExitStack() as first_server:
        await first_server.enter_async_context(serve(create_app(settings), port=port))
        async with tailing(options, out, err) as tail:
            assert [seq_of(await out.next()) for _ in first] == first
            await first_server.aclose()
            # The service is gone: what is stored meanwhile must arrive after the restart all the same.
            missed = await publish(settings, [22.0, 22.5])
            async with serve(create_app(settings), port=port):
                assert [seq_of(await out.next()) for _ in missed] == missed
                assert tail.retry_s == 0.2
                live = await publish(settings, [23.0])
                assert [seq_of(await out.next())] == live

    assert [seq_of(line) for line in out.all] == first + missed + live
    assert f"resuming after id {first[-1]}" in err.getvalue()


async def test_tail_shows_a_reset_when_the_id_is_unknown(settings: Settings, serve: Serve) -> None:
    stored = await publish(settings, [19.0])
    out, err = Lines(), io.StringIO()

    async with serve(create_app(settings)) as url:
        async with tailing(TailOptions(url=url, patterns=(">",), last_event_id="999"), out, err):
            reset = await out.next()
            assert reset.startswith("-- reset: ")
            assert json.loads(reset.removeprefix("-- reset: "))["reason"] == "unknown_id"
            assert seq_of(await out.next()) == stored[0]


async def test_tail_starts_with_the_snapshot_and_the_recent_history_when_asked(
    settings: Settings, serve: Serve
) -> None:
    stored = await publish(settings, [17.0, 17.5])
    out, err = Lines(), io.StringIO()

    async with serve(create_app(settings)) as url:
        async with tailing(TailOptions(url=url, patterns=(">",), snapshot=True), out, err):
            assert seq_of(await out.next()) == stored[-1]  # the latest of the one topic
        async with tailing(TailOptions(url=url, patterns=(">",), since_s=3600), out, err):
            assert [seq_of(await out.next()) for _ in stored] == stored  # the last hour's history


def test_tail_asks_for_the_history_as_a_negative_duration_the_stream_takes() -> None:
    tail = Tail(TailOptions(url="http://s", patterns=(">",), snapshot=True, since_s=90.5))

    assert tail.start_params() == [("snapshot", "latest"), ("since", "-90.5s")]
    assert Tail(TailOptions(url="http://s", patterns=(">",), since_s=600)).start_params() == [("since", "-600s")]


async def test_tail_raw_prints_the_event_data(settings: Settings, serve: Serve) -> None:
    await publish(settings, [18.5])
    out, err = Lines(), io.StringIO()

    async with serve(create_app(settings)) as url:
        async with tailing(TailOptions(url=url, patterns=(">",), last_event_id="0", raw=True), out, err):
            data = json.loads(await out.next())

    assert data["topic"] == "lab.probe-1.temperature"
    assert data["value"] == 18.5


async def test_tail_gives_up_when_the_server_refuses_the_request(settings: Settings, serve: Serve) -> None:
    err = io.StringIO()

    async with serve(create_app(settings)) as url:
        tail = Tail(TailOptions(url=url, patterns=("a..b",)), out=Lines(), err=err)
        async with asyncio.timeout(WAIT_S):
            assert await tail.run() == 1

    assert "refused: 400" in err.getvalue()


def tail_command(url: str) -> list[str]:
    """The command a user types, run as ``telemetry run`` runs its children."""
    return [sys.executable, "-m", "telemetry", "tail", ">", "--url", url, "--last-event-id", "0"]


def only_status_lines(stderr: str) -> bool:
    """Tail's own news, and nothing else: no traceback, no "Exception ignored" from the final flush."""
    return all(line.startswith("tail: ") for line in stderr.splitlines())


async def test_the_command_exits_quietly_when_its_reader_goes_away(settings: Settings, serve: Serve) -> None:
    """``telemetry tail '>' | head -n 2``: the exit code a shell gives a process killed by SIGPIPE, no traceback."""
    stored = await publish(settings, [20.0, 20.5])

    async with serve(create_app(settings)) as url, piped(*tail_command(url)) as tail:
        assert [seq_of(await tail.line()) for _ in stored] == stored
        tail.close_stdout()
        await publish(settings, [21.0])  # tail's next line has nowhere to go
        code, stderr = await tail.finish()

    assert code == BROKEN_PIPE_EXIT == 141
    assert "connected to" in stderr
    assert only_status_lines(stderr), stderr


async def test_the_command_exits_quietly_on_ctrl_c(settings: Settings, serve: Serve) -> None:
    stored = await publish(settings, [19.5])

    async with serve(create_app(settings)) as url, piped(*tail_command(url)) as tail:
        assert seq_of(await tail.line()) == stored[0]
        tail.process.send_signal(signal.SIGINT)
        code, stderr = await tail.finish()

    assert code == 0
    assert only_status_lines(stderr), stderr


async def test_tail_follows_a_stream_that_requires_auth(
    make_settings: Callable[..., Settings], serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(auth="required", jwt_secret=SECRET)
    monkeypatch.setenv("TELEMETRY_JWT_SECRET", SECRET)
    stored = await publish(settings, [20.0, 20.5])
    out, err = Lines(), io.StringIO()
    async with serve(create_app(settings)) as url:
        auth = CommandAuth.from_environment(subscribe=[Pattern.parse("lab.*.temperature")])
        options = TailOptions(url=url, patterns=("lab.*.temperature",), last_event_id="0", auth=auth)
        async with tailing(options, out, err):
            assert [seq_of(await out.next()) for _ in stored] == stored
