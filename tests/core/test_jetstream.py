"""core/jetstream.py's link as each service exposes it: NATS connection state and reconnections on /metrics."""

from __future__ import annotations

from support.metrics import metric, metric_becomes
from support.natsproc import StoppableNatsServer
from support.sse import Serve

from core.settings import Settings
from ingest.app import create_app as create_ingest
from stream.app import create_app as create_stream


async def test_both_services_show_nats_connected_and_count_a_reconnect(
    own_nats: StoppableNatsServer, serve: Serve
) -> None:
    settings = Settings(nats_urls=[own_nats.url], stream_name="LINKMETRICS", subject_prefix="linkmetrics")
    async with serve(create_ingest(settings)) as ingest, serve(create_stream(settings)) as stream:
        urls = (ingest, stream)
        for url in urls:
            assert await metric(url, "telemetry_nats_connected") == 1
            assert await metric(url, "telemetry_nats_reconnects_total") == 0
        own_nats.stop()
        for url in urls:
            await metric_becomes(url, "telemetry_nats_connected", 0)
        own_nats.start()
        for url in urls:
            await metric_becomes(url, "telemetry_nats_reconnects_total", 1)
            assert await metric(url, "telemetry_nats_connected") == 1
