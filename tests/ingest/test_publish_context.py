"""The leaner publish sends what nats-py's publish_async sends, keeps its bookkeeping, and refuses unsafe ids."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from core.settings import Settings
from ingest.publish_context import PublishContext

TOKEN = re.compile(rb"(HPUB \S+ \S+\.)\S+ ")  # the reply token, the one part meant to differ


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    connection = await nats.connect(settings.nats_urls)
    await connection.jetstream().add_stream(name=settings.stream_name, subjects=[f"{settings.subject_prefix}.>"])
    yield connection
    await connection.drain()


def context(nc: NATS, settings: Settings, max_in_flight: int = 10) -> PublishContext:
    return PublishContext(nc, timeout_s=2.0, max_in_flight=max_in_flight, stream=settings.stream_name)


async def sent_commands(nc: NATS, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every protocol command the connection is asked to send from now on."""
    sent: list[bytes] = []
    send = nc._send_command

    async def record(cmd: bytes, priority: bool = False) -> None:
        sent.append(cmd)
        await send(cmd, priority)

    monkeypatch.setattr(nc, "_send_command", record)
    return sent


@pytest.mark.parametrize("msg_id", ["dev-1-000042", None])
async def test_the_same_protocol_bytes_as_publish_async(
    nc: NATS, settings: Settings, monkeypatch: pytest.MonkeyPatch, msg_id: str | None
) -> None:
    js = context(nc, settings)
    subject, payload = f"{settings.subject_prefix}.s.d.m", b'{"value":1}'
    await (await js.publish_reading(subject, payload, msg_id))  # the reply subscription is made on first use
    sent = await sent_commands(nc, monkeypatch)
    lean = await js.publish_reading(subject, payload, msg_id)
    usual = await js.publish_async(
        subject, payload, stream=settings.stream_name, headers=None if msg_id is None else {"Nats-Msg-Id": msg_id}
    )
    lean_ack, usual_ack = await lean, await usual

    assert len(sent) == 2
    assert TOKEN.sub(rb"\1TOKEN ", sent[0]) == TOKEN.sub(rb"\1TOKEN ", sent[1])
    assert usual_ack.seq == lean_ack.seq + (1 if msg_id is None else 0)
    assert usual_ack.duplicate is (None if msg_id is None else True)  # the same id: de-duplicated by JetStream


async def test_futures_fail_on_a_jetstream_error_and_free_their_slot(nc: NATS, settings: Settings) -> None:
    js = PublishContext(nc, timeout_s=2.0, max_in_flight=1, stream=f"NOT{settings.stream_name}")
    for _ in range(3):  # one slot: each publish needs the previous one's slot back
        future = await asyncio.wait_for(js.publish_reading(f"{settings.subject_prefix}.s.d.m", b"{}", None), 2.0)
        with pytest.raises(nats.js.errors.APIError, match="expected stream does not match"):
            await asyncio.wait_for(future, 2.0)
    assert js.publish_async_pending() == 0 and not js.slots_full()


@pytest.mark.parametrize("msg_id", ["two\r\nNats-Expected-Stream: OTHER", "with space", "", "x" * 129])
async def test_an_id_that_is_not_a_safe_header_value_is_refused(
    nc: NATS, settings: Settings, monkeypatch: pytest.MonkeyPatch, msg_id: str
) -> None:
    js = context(nc, settings)
    sent = await sent_commands(nc, monkeypatch)
    with pytest.raises(nats.errors.BadHeaderError):
        await js.publish_reading(f"{settings.subject_prefix}.s.d.m", b"{}", msg_id)
    assert sent == [] and js.publish_async_pending() == 0


async def test_nothing_is_buffered_while_the_connection_is_down(own_nats: Any) -> None:
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
