"""The leaner publish sends what nats-py's publish_async sends, keeps its bookkeeping, and refuses unsafe ids;
without the nats-py internals it relies on, the ingest publishes through publish_async and still works."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import PubAck
from structlog.testing import capture_logs
from support.natsproc import StoppableNatsServer

from core.readings import DEDUP_ID_MAX_CHARS
from core.settings import Settings
from ingest import publish_context
from ingest.app import create_app
from ingest.publish_context import InlineReplies, PublishContext, missing_internals
from telemetry.natsserver import LocalNatsServer

TOKEN = re.compile(rb"(HPUB \S+ \S+\.)\S+ ")  # the reply token, the one part meant to differ
HPUB = re.compile(rb"HPUB \S+ \S+ \d+ (\d+)\r\n")
ACK_TIMEOUT_S = 5.0


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    connection = await nats.connect(settings.nats_urls)
    await connection.jetstream().add_stream(name=settings.stream_name, subjects=[f"{settings.subject_prefix}.>"])
    yield connection
    await connection.drain()


class Relay:
    """A TCP relay in front of nats-server that keeps every byte its clients send: what is really on the wire."""

    def __init__(self, server: LocalNatsServer) -> None:
        self.server = server
        self.sent = bytearray()
        self.url = ""
        self._pumps: set[asyncio.Task[None]] = set()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool) -> None:
        try:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    if record:
                        self.sent += data
                    writer.write(data)
                    await writer.drain()
        finally:
            writer.close()  # also when the relay stops and cancels the pump: no socket is left open

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(self.server.host, self.server.port)
        for pump in (self._pump(reader, upstream_writer, True), self._pump(upstream_reader, writer, False)):
            task = asyncio.create_task(pump)
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Relay]:
        server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            yield self
        finally:
            server.close()
            for task in list(self._pumps):
                task.cancel()
            await asyncio.gather(*self._pumps, return_exceptions=True)
            await server.wait_closed()


@pytest.fixture
async def relay(nats_server: LocalNatsServer) -> AsyncIterator[Relay]:
    async with Relay(nats_server).running() as running:
        yield running


def hpub_commands(sent: bytes) -> list[bytes]:
    """Every HPUB command in what a client sent, each with its headers and payload."""
    commands = []
    for match in HPUB.finditer(sent):
        commands.append(sent[match.start() : match.end() + int(match[1]) + 2])
    return commands


def context(nc: NATS, settings: Settings, max_in_flight: int = 10) -> PublishContext:
    return PublishContext(nc, timeout_s=2.0, max_in_flight=max_in_flight, stream=settings.stream_name)


async def acked(future: asyncio.Future[PubAck]) -> PubAck:
    """The acknowledgement, or a failure (not a hang) when the reply never finds its future."""
    return await asyncio.wait_for(future, ACK_TIMEOUT_S)


async def sent_commands(nc: NATS, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every protocol command the connection is asked to send from now on."""
    sent: list[bytes] = []
    send = nc._send_command

    async def record(cmd: bytes, priority: bool = False) -> None:
        sent.append(cmd)
        await send(cmd, priority)

    monkeypatch.setattr(nc, "_send_command", record)
    return sent


def without_an_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a nats-py where a method the lean path needs was renamed (nats-py's own code is left as it is)."""
    renamed = (NATS, "_send_command_renamed_in_a_later_release")
    monkeypatch.setattr(publish_context, "INTERNAL_METHODS", (*publish_context.INTERNAL_METHODS, renamed))


async def test_on_the_pinned_nats_py_every_internal_is_there_and_the_lean_path_is_used(
    nc: NATS, settings: Settings
) -> None:
    with capture_logs() as logs:
        js = context(nc, settings)
    assert missing_internals(nc, js) == []
    assert js.lean
    assert logs == []


async def test_an_internal_that_is_missing_or_of_another_kind_is_named_and_the_lean_path_is_off(
    nc: NATS, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(JetStreamContext, "_init_async_reply")  # renamed by an upgrade
    monkeypatch.setattr(nc, "_inbox_prefix", "_INBOX")  # a str where a bytearray was
    with capture_logs() as logs:
        js = context(nc, settings)
    monkeypatch.undo()
    assert not js.lean
    assert logs == [
        {
            "event": "nats_internals_missing",
            "missing": ["JetStreamContext._init_async_reply", "Client._inbox_prefix"],
            "publishing_with": "publish_async",
            "log_level": "warning",
        }
    ]


@pytest.mark.parametrize("msg_id", ["dev-1-000042", None])
async def test_the_lean_path_puts_the_same_command_on_the_wire_as_publish_async(
    relay: Relay, nc: NATS, settings: Settings, msg_id: str | None
) -> None:
    relayed = await nats.connect(relay.url)
    try:
        js = context(relayed, settings)
        assert js.lean
        subject, payload = f"{settings.subject_prefix}.s.d.m", b'{"value":1}'
        await acked(await js.publish_reading(subject, payload, msg_id))  # the reply subscription is made on first use
        before = len(relay.sent)
        lean_ack = await acked(await js.publish_reading(subject, payload, msg_id))
        usual_ack = await acked(
            await js.publish_async(
                subject,
                payload,
                stream=settings.stream_name,
                headers=None if msg_id is None else {"Nats-Msg-Id": msg_id},
            )
        )
        sent = hpub_commands(bytes(relay.sent[before:]))  # the server acknowledged both: the relay passed them on
    finally:
        await relayed.close()

    assert len(sent) == 2
    lean, usual = (TOKEN.sub(rb"\1TOKEN ", command) for command in sent)
    assert lean == usual
    assert sent[0] != sent[1]  # each with a reply token of its own
    assert usual_ack.seq == lean_ack.seq + (1 if msg_id is None else 0)
    assert usual_ack.duplicate is (None if msg_id is None else True)  # the same id: de-duplicated by JetStream


async def test_without_the_internals_the_service_stores_and_acknowledges_through_publish_async(
    settings: Settings,
    serve: Callable[..., AbstractAsyncContextManager[str]],
    client: httpx.AsyncClient,
    js: JetStreamContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    without_an_internal(monkeypatch)
    public_subjects: list[str] = []
    publish_async = PublishContext.publish_async

    async def counted(self: PublishContext, subject: str, *args: Any, **kwargs: Any) -> asyncio.Future[PubAck]:
        public_subjects.append(subject)
        return await publish_async(self, subject, *args, **kwargs)

    monkeypatch.setattr(PublishContext, "publish_async", counted)
    readings = [{"site": "s", "device": "d", "metric": "m", "value": n, "id": f"fallback-{n}"} for n in range(5)]
    with capture_logs() as logs:
        async with serve(create_app(settings)) as url:
            first = await client.post(f"{url}/v1/readings", json=readings)
            again = await client.post(f"{url}/v1/readings", json=readings)

    assert first.status_code == 202, first.text
    assert [result["duplicate"] for result in first.json()["results"]] == [False] * 5
    assert again.status_code == 202, again.text  # the ids went out as Nats-Msg-Id: JetStream de-duplicated them
    assert again.json()["results"] == [{**result, "duplicate": True} for result in first.json()["results"]]
    assert public_subjects == [f"{settings.subject_prefix}.s.d.m"] * 10
    assert [log["missing"] for log in logs if log["event"] == "nats_internals_missing"] == [
        ["Client._send_command_renamed_in_a_later_release"]
    ]
    info = await js.stream_info(settings.stream_name)
    assert info.state.messages == 5
    stored = await js.get_msg(settings.stream_name, first.json()["results"][-1]["seq"])
    assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == "s.d.fallback-4"


async def test_futures_fail_on_a_jetstream_error_and_free_their_slot(nc: NATS, settings: Settings) -> None:
    js = PublishContext(nc, timeout_s=2.0, max_in_flight=1, stream=f"NOT{settings.stream_name}")
    for _ in range(3):  # one slot: each publish needs the previous one's slot back
        future = await asyncio.wait_for(js.publish_reading(f"{settings.subject_prefix}.s.d.m", b"{}", None), 2.0)
        with pytest.raises(nats.js.errors.APIError, match="expected stream does not match"):
            await asyncio.wait_for(future, 2.0)
    assert js.publish_async_pending() == 0 and not js.slots_full()


def reply_subscription(nc: NATS, js: PublishContext) -> Any:
    assert js._async_reply_prefix is not None
    subject = js._async_reply_prefix.decode() + "*"
    return next(sub for sub in nc._subs.values() if sub._subject == subject)


async def test_acknowledgements_are_settled_as_they_are_read_and_an_unreadable_one_harms_nothing(
    nc: NATS, settings: Settings
) -> None:
    js = context(nc, settings)
    subject = f"{settings.subject_prefix}.s.d.m"
    first = await acked(await js.publish_reading(subject, b"{}", "s.d.inline-1"))
    replies = reply_subscription(nc, js)
    assert isinstance(replies._pending_queue, InlineReplies)  # not queued for the subscription's task
    prefix = js._async_reply_prefix
    assert prefix is not None
    waiting: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
    marker: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
    js._publish_async_futures["awaited"] = waiting  # as a publish whose acknowledgement is due
    js._publish_async_futures["marker"] = marker
    with capture_logs() as logs:
        await nc.publish(prefix.decode() + "unknown", b"{}")  # no publish waits for it: dropped
        await nc.publish(prefix.decode() + "awaited", b"not json")  # unreadable: logged, the read goes on
        await nc.publish(prefix.decode() + "marker", b'{"stream":"S","seq":7}')
        marked = await asyncio.wait_for(marker, 10.0)  # delivered in order: the two before it have been read
    assert marked.seq == 7
    assert [entry["event"] for entry in logs] == ["publish_reply_unreadable"]
    assert not waiting.done()
    del js._publish_async_futures["awaited"], js._publish_async_futures["marker"]
    after = await acked(await js.publish_reading(subject, b"{}", "s.d.inline-2"))
    assert after.seq > first.seq and replies._pending_size == 0 and nc.is_connected


async def test_a_reply_subscription_without_what_inline_settling_needs_keeps_its_queue(
    nc: NATS, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish_context, "SUBSCRIPTION_ATTRIBUTES", (*publish_context.SUBSCRIPTION_ATTRIBUTES, "_gone"))
    js = context(nc, settings)
    with capture_logs() as logs:
        ack = await acked(await js.publish_reading(f"{settings.subject_prefix}.s.d.m", b"{}", None))
    assert ack.seq >= 1 and not isinstance(reply_subscription(nc, js)._pending_queue, InlineReplies)
    assert [(entry["event"], entry["missing"]) for entry in logs] == [
        ("nats_internals_missing", ["Subscription._gone"])
    ]


@pytest.mark.parametrize(
    "msg_id", ["two\r\nNats-Expected-Stream: OTHER", "with space", "", "x" * (DEDUP_ID_MAX_CHARS + 1)]
)
async def test_an_id_that_is_not_a_safe_header_value_is_refused(
    nc: NATS, settings: Settings, monkeypatch: pytest.MonkeyPatch, msg_id: str
) -> None:
    js = context(nc, settings)
    sent = await sent_commands(nc, monkeypatch)
    with pytest.raises(nats.errors.BadHeaderError):
        await js.publish_reading(f"{settings.subject_prefix}.s.d.m", b"{}", msg_id)
    assert sent == [] and js.publish_async_pending() == 0


async def test_nothing_is_buffered_while_the_connection_is_down(own_nats: StoppableNatsServer) -> None:
    # nats-py's own publish would buffer the message and send it after the reconnect, after our 503.
    disconnected, reconnected = asyncio.Event(), asyncio.Event()

    async def on_disconnected() -> None:
        disconnected.set()

    async def on_reconnected() -> None:
        reconnected.set()

    nc = await nats.connect(
        own_nats.url,
        reconnect_time_wait=0.1,
        max_reconnect_attempts=-1,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    try:
        await nc.jetstream().add_stream(name="S", subjects=["s.>"])
        js = PublishContext(nc, timeout_s=2.0, max_in_flight=10, stream="S")
        await (await js.publish_reading("s.d.m", b"{}", "before"))
        await asyncio.to_thread(own_nats.stop)
        await asyncio.wait_for(disconnected.wait(), 10)
        with pytest.raises(nats.errors.ConnectionReconnectingError):
            await js.publish_reading("s.d.m", b"{}", "while-down")
        assert js.publish_async_pending() == 0 and not js.slots_full()
        await asyncio.to_thread(own_nats.start)
        await asyncio.wait_for(reconnected.wait(), 10)
        await nc.flush()
        info = await nc.jetstream().stream_info("S")
    finally:
        await nc.close()
    assert info.state.messages == 1


async def test_through_publish_async_a_wait_for_a_slot_that_is_cut_short_stays_a_timeout(
    own_nats: StoppableNatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # publish_async turns the cancellation of its wait into TooManyStalledMsgsError; the publisher needs the timeout.
    without_an_internal(monkeypatch)
    nc = await nats.connect(own_nats.url)
    try:
        await nc.jetstream().add_stream(name="S", subjects=["s.>"])
        js = PublishContext(nc, timeout_s=2.0, max_in_flight=1, stream="S")
        assert not js.lean
        await acked(await js.publish_reading("s.d.m", b"{}", "first"))
        await asyncio.to_thread(own_nats.pause)  # no acknowledgement from now on: the one slot stays taken
        holding = await js.publish_reading("s.d.m", b"{}", "holding")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await js.publish_reading("s.d.m", b"{}", "waiting")
        assert not holding.done() and js.slots_full()
    finally:
        own_nats.resume()
        await nc.close()
