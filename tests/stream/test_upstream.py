"""The ordered feed's own connection to NATS: opened within the connect timeout it is given (the settings'), and
only one at a time, also when a reset is asked for while the feed starts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS

from core.jetstream import ensure_stream
from core.natsconn import NatsSecurity
from core.settings import Settings
from stream.upstream import MessageHandler, OrderedFeed
from telemetry.natsserver import LocalNatsServer

CLIENT_NAME = "upstream-test"


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    connection = await nats.connect(settings.nats_urls, name=CLIENT_NAME)
    await ensure_stream(connection.jetstream(), settings)
    yield connection
    await connection.close()


async def ignore(seq: int, subject: str, payload: bytes, pending: int, ends_batch: bool) -> None:
    """A handler for a feed whose deliveries do not matter here."""


def feed_of(nc: NATS, settings: Settings, handler: MessageHandler, connect_timeout_s: float) -> OrderedFeed:
    """A feed of every reading of the test's stream, from its start, on a connection of its own called ``-feed``."""
    return OrderedFeed(
        nc,
        nc.jetstream(),
        stream=settings.stream_name,
        filters=[f"{settings.subject_prefix}.>"],
        start_seq=1,
        handler=handler,
        connect_timeout_s=connect_timeout_s,
        security=NatsSecurity(),
        name="feed",
    )


async def test_the_feeds_connection_is_opened_within_the_connect_timeout_it_is_given(
    nc: NATS, settings: Settings
) -> None:
    # Over before a connection can be made, where a fixed 5 s would have let it be.
    feed = feed_of(nc, settings, ignore, connect_timeout_s=1e-9)
    try:
        with pytest.raises(TimeoutError):
            await feed.start()
    finally:
        await feed.close()


async def feed_connections(server: LocalNatsServer, name: str) -> int:
    """How many connections called ``name`` the server has (its /connz)."""
    async with httpx.AsyncClient() as client:
        connz = (await client.get(f"http://{server.host}:{server.monitor_port}/connz")).json()
    return sum(1 for connection in connz["connections"] or [] if connection.get("name") == name)


async def test_a_reset_asked_for_while_the_feed_starts_leaves_one_connection_and_none_after_close(
    nc: NATS, settings: Settings, nats_server: LocalNatsServer
) -> None:
    """A stream-created advisory can arrive while the live feed starts: two consumers were created at once, and
    the connection of one was never closed (the service's event loop then took 30 s to close)."""
    delivered: asyncio.Queue[int] = asyncio.Queue()

    async def collect(seq: int, subject: str, payload: bytes, pending: int, ends_batch: bool) -> None:
        delivered.put_nowait(seq)

    feed = feed_of(nc, settings, collect, connect_timeout_s=settings.nats_connect_timeout_s)
    starting = asyncio.create_task(feed.start())
    await asyncio.sleep(0)  # the start is opening the feed's connection
    feed.restart("stream created")
    try:
        await starting
        ack = await nc.jetstream().publish(f"{settings.subject_prefix}.a.b.c", b"{}")
        async with asyncio.timeout(30):
            assert await delivered.get() == ack.seq  # the reset is done: its consumer delivers
        assert await feed_connections(nats_server, f"{CLIENT_NAME}-feed") == 1
    finally:
        await feed.close()
    async with asyncio.timeout(30):
        while True:  # the server notices a closed connection in its own time
            if not await feed_connections(nats_server, f"{CLIENT_NAME}-feed"):
                break
            await asyncio.sleep(0.02)
    assert delivered.empty()  # delivered once
