"""The ordered feed's own connection to NATS: opened within the connect timeout it is given (the settings')."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS

from core.jetstream import ensure_stream
from core.settings import Settings
from stream.upstream import OrderedFeed


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    connection = await nats.connect(settings.nats_urls)
    await ensure_stream(connection.jetstream(), settings)
    yield connection
    await connection.close()


async def ignore(seq: int, subject: str, payload: bytes, pending: int) -> None:
    """A handler for a feed whose deliveries do not matter here."""


async def test_the_feeds_connection_is_opened_within_the_connect_timeout_it_is_given(
    nc: NATS, settings: Settings
) -> None:
    feed = OrderedFeed(
        nc,
        nc.jetstream(),
        stream=settings.stream_name,
        filters=[f"{settings.subject_prefix}.>"],
        start_seq=1,
        handler=ignore,
        connect_timeout_s=1e-9,  # over before a connection can be made, where a fixed 5 s would have let it be
        name="test",
    )
    try:
        with pytest.raises(TimeoutError):
            await feed.start()
    finally:
        await feed.close()
