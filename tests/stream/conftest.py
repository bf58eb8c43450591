"""Stream-service fixtures: the app served on a real socket, readings published straight to JetStream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import nats
import pytest
from nats.js import JetStreamContext

from core.jetstream import ensure_stream
from core.readings import Reading, stored_payload
from core.settings import Settings
from core.topics import Subjects

Publish = Callable[..., Awaitable[list[int]]]


@pytest.fixture
async def js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    """A JetStream context on the test's stream (created if the service has not done so yet)."""
    nc = await nats.connect(settings.nats_urls)
    context = nc.jetstream()
    await ensure_stream(context, settings)
    yield context
    await nc.drain()


@pytest.fixture
def publish(js: JetStreamContext, settings: Settings) -> Publish:
    """``await publish(site, device, metric, values)``: store readings as ingest would; returns their seqs.

    ``padding`` adds about that many bytes of tags to each reading, for tests that need volume.
    """
    subjects = Subjects(settings.subject_prefix)

    async def publish_values(site: str, device: str, metric: str, values: list[float], padding: int = 0) -> list[int]:
        tags = {f"pad{i}": "x" * 250 for i in range(min(16, padding // 256))} or None
        seqs = []
        for value in values:
            reading = Reading(site=site, device=device, metric=metric, value=value, tags=tags)
            ack = await js.publish(
                subjects.for_topic(reading.topic),
                stored_payload(reading, datetime.now(UTC)),
                stream=settings.stream_name,
            )
            seqs.append(ack.seq)
        return seqs

    return publish_values
