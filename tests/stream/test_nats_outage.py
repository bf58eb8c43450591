"""NATS goes away mid-stream and comes back, or the stream is created anew: clients stay connected and miss nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import nats
from nats.js import JetStreamContext
from support.metrics import metric, metric_becomes
from support.net import wait_for_readyz
from support.sse import Serve, events, seqs, take

from core.jetstream import ensure_stream
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
    """And the live feed's metrics show the outage: not connected meanwhile, its consumer made again after."""
    settings = Settings(nats_urls=[own_nats.url], stream_name="OUTAGE", subject_prefix="outage", log_format="json")
    async with serve(create_app(settings)) as url, events(url, "s.>") as stream:
        before = await store(settings, [1, 2])
        assert seqs(await take(stream, 2)) == before
        assert await metric(url, "telemetry_stream_live_feed_connected") == 1
        assert await metric(url, "telemetry_stream_live_feed_resets_total") == 0
        own_nats.stop()
        await wait_for_readyz(url, 503)
        await metric_becomes(url, "telemetry_stream_live_feed_connected", 0)
        own_nats.start()
        meanwhile = await store(settings, [3, 4])  # stored before the service is back on NATS
        await wait_for_readyz(url, 200)
        after = await store(settings, [5])
        assert seqs(await take(stream, 3)) == meanwhile + after
        await metric_becomes(url, "telemetry_stream_live_feed_connected", 1)
        assert await metric(url, "telemetry_stream_live_feed_resets_total") >= 1


async def test_a_stream_deleted_and_created_again_is_followed_from_its_start(
    settings: Settings, serve: Serve, js: JetStreamContext, publish: Any
) -> None:
    async with serve(create_app(settings)) as url:
        async with events(url, "s.>") as stream:
            old = await publish("s", "d", "m", [1.0, 2.0])
            assert seqs(await take(stream, 2)) == old
            await js.delete_stream(settings.stream_name)
            await ensure_stream(js, settings)  # as the ingest service does once it finds the stream gone
            new = await publish("s", "d", "m", [3.0, 4.0])
            assert new == [1, 2]  # the new stream numbers from 1 again
            reset, *readings = await take(stream, 3)
        assert reset.event == "reset"
        assert json.loads(reset.data) == {"reason": "stream_recreated", "first_available_id": 1}
        assert seqs(readings) == new
        assert [json.loads(event.data)["value"] for event in readings] == [3.0, 4.0]
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{url}/metrics")).text
        assert 'telemetry_stream_resets_total{reason="stream_recreated"} 1.0' in metrics
        async with events(url, "s.>", headers={"Last-Event-ID": "1"}) as resumed:
            (after,) = await take(resumed, 1)
        assert (after.id, json.loads(after.data)["value"]) == ("2", 4.0)
