"""NATS goes away mid-stream and comes back: clients stay connected and miss nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import nats
from support.net import wait_for_readyz
from support.sse import Serve, events, seqs, take

from core.readings import Reading, stored_payload
from core.settings import Settings
from core.topics import Subjects
from stream.app import create_app
from telemetry.natsserver import LocalNatsServer


async def store(settings: Settings, values: list[float]) -> list[int]:
    """Publish readings with a fresh connection, as an ingest pod would."""
    nc = await nats.connect(settings.nats_urls)
    js = nc.jetstream()
    subjects = Subjects(settings.subject_prefix)
    seqs_ = []
    for value in values:
        reading = Reading(site="s", device="d", metric="m", value=value)
        ack = await js.publish(subjects.for_topic(reading.topic), stored_payload(reading, datetime.now(UTC)))
        seqs_.append(ack.seq)
    await nc.drain()
    return seqs_


async def test_nats_restart_mid_stream_loses_nothing(own_nats: LocalNatsServer, serve: Serve) -> None:
    settings = Settings(nats_urls=[own_nats.url], stream_name="OUTAGE", subject_prefix="outage", log_format="json")
    async with serve(create_app(settings)) as url, events(url, "s.>") as stream:
        before = await store(settings, [1, 2])
        assert seqs(await take(stream, 2)) == before
        own_nats.stop()
        await wait_for_readyz(url, 503)
        own_nats.start()
        meanwhile = await store(settings, [3, 4])  # stored before the service is back on NATS
        await wait_for_readyz(url, 200)
        after = await store(settings, [5])
        assert seqs(await take(stream, 3)) == meanwhile + after
