"""core/jetstream.py's link as each service exposes it: NATS connection state and reconnections on /metrics."""

from __future__ import annotations

import asyncio

from support.metrics import metric, metric_becomes
from support.natsproc import StoppableNatsServer
from support.sse import Serve

from core.settings import Settings
from ingest.app import create_app as create_ingest
from stream.app import create_app as create_stream

# Generous: the socket goes back as the attempt fails; without the fix it waits for a garbage collection.
SOCKET_BACK_WITHIN_S = 30


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


async def test_a_reconnect_attempt_that_gets_no_info_gives_its_socket_back_at_once(
    own_nats: StoppableNatsServer, serve: Serve
) -> None:
    """A node that accepts but goes away before its INFO (shutting down) must not keep a socket of the service's
    open: nats-py leaves it to the garbage collector, which may come in any later test, or never under load."""
    settings = Settings(nats_urls=[own_nats.url], stream_name="NOINFO", subject_prefix="noinfo")
    attempts: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue()
    writers: list[asyncio.StreamWriter] = []

    async def answer_without_info(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        writer.write(b"PING\r\n")
        await attempts.put(reader)

    async with serve(create_ingest(settings)) as ingest:
        await metric_becomes(ingest, "telemetry_nats_connected", 1)
        own_nats.stop()
        await metric_becomes(ingest, "telemetry_nats_connected", 0)
        not_nats = await asyncio.start_server(answer_without_info, own_nats.host, own_nats.port)
        try:
            attempt = await asyncio.wait_for(attempts.get(), SOCKET_BACK_WITHIN_S)
            assert await asyncio.wait_for(attempt.read(), SOCKET_BACK_WITHIN_S) == b"", "the service sent something"
        finally:
            not_nats.close()
            for writer in writers:
                writer.close()
            await not_nats.wait_closed()
        own_nats.start()
        await metric_becomes(ingest, "telemetry_nats_connected", 1)
