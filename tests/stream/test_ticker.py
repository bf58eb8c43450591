"""The ticker's rounds over real streams: the streams of clients gone without their handler being told end."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs
from support.metrics import metric, metric_becomes
from support.sse import Serve, events, raw_connection, raw_requests, seqs, take

from core.settings import Settings
from stream.app import create_app

GONE_WITHIN_S = 30.0  # a tick (at most a second) after the connection closed, on a loaded machine
CLOSED_TRANSPORT = "unable to perform operation"  # uvloop's RuntimeError on a write to a closed transport


async def pipeline_and_hang_up(url: str) -> None:
    """The issue's hostile client: a stream with a request pipelined behind it, then a reset once the stream runs.

    uvicorn's httptools protocol then tells only the pipelined request that the client left: the stream's
    handler never receives ``http.disconnect``, though the connection's transport is closed. (A reset is
    what closing a socket with unread data sends, as the issue's client did.)
    """
    reader, writer = await raw_connection(url)
    writer.write(raw_requests("/v1/stream?topic=demo.%3E", "/healthz"))
    received = b""
    while b"retry:" not in received:
        chunk = await reader.read(4096)
        assert chunk, "the stream ended before it started"
        received += chunk
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    await writer.wait_closed()


async def test_streams_of_clients_gone_behind_a_pipelined_request_end_and_harm_nobody(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing is written to the five (no keep-alive, no reading): only the ticker's look at their transports
    # can end their streams.
    settings = make_settings(keepalive_s=600.0)
    families = ("plant1", "plant2")
    with capture_logs() as logs:
        async with serve(create_app(settings)) as url, contextlib.AsyncExitStack() as stack:
            dashboards = {
                family: [await stack.enter_async_context(events(url, f"{family}.>")) for _ in range(4)]
                for family in families
            }
            for _ in range(5):
                await pipeline_and_hang_up(url)
            for round_ in range(2):  # before and after the ticker ended the five
                stored = {family: await publish(family, "boiler", "temperature", [1.0, 2.0]) for family in families}
                for family, streams in dashboards.items():
                    for stream in streams:
                        assert seqs(await take(stream, 2)) == stored[family]
                if round_ == 0:
                    await metric_becomes(url, "telemetry_stream_connections_active", 8, timeout_s=GONE_WITHIN_S)
            assert await metric(url, 'telemetry_stream_ended_connections_total{reason="transport_closed"}') == 5
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{url}/readyz")).status_code == 200
    assert [entry for entry in logs if CLOSED_TRANSPORT in str(entry)] == []
    assert CLOSED_TRANSPORT not in caplog.text
