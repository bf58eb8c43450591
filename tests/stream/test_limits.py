"""Per-connection limits, caps, slow consumers and drain, over real sockets against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from support.metrics import metric, metric_becomes
from support.sse import EVENT_TIMEOUT_S, Serve, events, never_reading, read_until_closed, seqs, take

from core.readings import Reading, stored_payload
from core.settings import Settings
from stream.app import create_app

NOW = datetime(2026, 11, 27, tzinfo=UTC)
CUT_OFF_WITHIN_S = 60.0  # rounds until any kernel's socket buffers are full, plus the slow-consumer timeout


def reading_values(received: list[Any]) -> list[float]:
    return [json.loads(event.data)["value"] for event in received if event.event == "reading"]


async def test_max_events_ends_the_stream_and_resume_loses_nothing(
    settings: Settings, serve: Serve, publish: Any
) -> None:
    stored = await publish("s", "d", "m", [1, 2, 3, 4, 5])
    async with serve(create_app(settings)) as url:
        async with events(url, "s.>", last_event_id=0, max_events=3) as stream:
            *first, end = await take(stream, 4)
            assert [e.event for e in [*first, end]] == ["reading"] * 3 + ["end"]
            assert json.loads(end.data) == {"reason": "max_events"}
            assert await take_nothing_more(stream)
        async with events(url, "s.>", headers={"Last-Event-ID": first[-1].id}) as stream:
            rest = await take(stream, 2)
    assert seqs(first) + seqs(rest) == stored


async def take_nothing_more(stream: Any) -> bool:
    """True when the server closed the stream (the iterator ends)."""
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        async for _event in stream:
            return False
    return True


async def test_lifetime_ends_the_stream_and_resume_loses_nothing(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any
) -> None:
    settings = make_settings(max_lifetime_s=1.0)
    stored = await publish("s", "d", "m", [0])
    async with serve(create_app(settings)) as url:
        async with events(url, "s.>", last_event_id=0) as stream:
            stored += await publish("s", "d", "m", [1, 2])
            *received, end = await take_until_closed(stream)
        assert end.event == "end"
        assert json.loads(end.data) == {"reason": "max_lifetime"}
        await metric_becomes(url, 'telemetry_stream_ended_connections_total{reason="max_lifetime"}', 1)
        stored += await publish("s", "d", "m", [3])
        # However far the stream got before its lifetime ended, the client resumes after the last id it has.
        resume_after = received[-1].id if received else "0"
        async with events(url, "s.>", headers={"Last-Event-ID": resume_after}) as stream:
            resumed = await take(stream, len(stored) - len(received))
    assert seqs(received) + seqs(resumed) == stored


async def take_until_closed(stream: Any) -> list[Any]:
    """Every event until the server closes the stream (the retry hint alone left out)."""
    received = []
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        async for event in stream:
            if event.event != "message" or event.data:
                received.append(event)
    return received


async def test_rate_limit_conflates_to_the_latest_value_per_topic(
    settings: Settings, serve: Serve, publish: Any
) -> None:
    rate = 2.0
    latest = {"s.d.a": 49.0, "s.d.b": 149.0}
    async with serve(create_app(settings)) as url:
        started = time.monotonic()  # before the connection, whose budget starts full
        async with events(url, "s.>", rate=rate) as stream:
            await publish("s", "d", "a", [float(value) for value in range(50)])
            await publish("s", "d", "b", [float(value) for value in range(100, 150)])
            received: list[Any] = []
            while {json.loads(e.data)["topic"]: json.loads(e.data)["value"] for e in received} != latest:
                received += await take(stream, 1)
            elapsed_s = time.monotonic() - started
        conflated = await metric(url, "telemetry_stream_conflated_readings_total")
    for topic in latest:
        values = [json.loads(e.data)["value"] for e in received if json.loads(e.data)["topic"] == topic]
        assert values == sorted(set(values))  # in order, never an older reading after a newer one
    # A token bucket of one second's worth: however slow this machine, no more than the budget went out.
    assert len(received) <= max(1.0, rate) + rate * elapsed_s < 100
    assert conflated == 100 - len(received)  # each reading not sent was replaced by a newer one of its topic


async def test_a_client_whose_conflated_readings_pass_its_buffer_is_ended_as_a_slow_consumer(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any
) -> None:
    # One reading a second on 40 topics: the latest reading of each waits, more than max_buffer_bytes in all
    # (about 250 bytes each). The client reads everything it is sent: it gets the end, and no reset.
    settings = make_settings(max_buffer_bytes=4096)
    async with serve(create_app(settings)) as url:
        async with events(url, "s.>", rate=1) as stream:
            for device in range(40):
                await publish("s", f"d{device}", "m", [1.0])
            *readings, end = await take_until_closed(stream)
        assert {event.event for event in readings} <= {"reading"}
        assert (end.event, json.loads(end.data)) == ("end", {"reason": "slow_consumer"})
        await metric_becomes(url, 'telemetry_stream_ended_connections_total{reason="slow_consumer"}', 1)


async def test_connection_caps_answer_200_with_retry_and_end(
    make_settings: Callable[..., Settings], serve: Serve
) -> None:
    settings = make_settings(max_connections_per_client=2, overload_retry_ms=4000)
    async with serve(create_app(settings)) as url, events(url, "a.b.c"), events(url, "a.b.c"):
        async with httpx.AsyncClient() as client:
            refused = await client.get(f"{url}/v1/stream", params={"topic": "a.b.c"})
    assert refused.status_code == 200  # a browser's EventSource gives up for good on anything else
    assert refused.headers["content-type"].startswith("text/event-stream")
    retry, end = refused.text.strip().split("\n\n")
    assert 2000 <= int(retry.removeprefix("retry: ")) <= 4000
    assert end == 'event: end\ndata: {"reason":"too_many_connections_from_client"}'


@pytest.mark.parametrize(("trusted", "second_is_refused"), [("127.0.0.1", False), ("10.9.9.9", True)])
async def test_per_client_cap_sees_the_client_behind_a_trusted_proxy_only(
    make_settings: Callable[..., Settings], serve: Serve, trusted: str, second_is_refused: bool
) -> None:
    settings = make_settings(max_connections_per_client=1, forwarded_allow_ips=trusted)
    behind = {"X-Forwarded-For": "203.0.113.7"}
    async with serve(create_app(settings), forwarded_allow_ips=settings.forwarded_allow_ips) as url:
        async with events(url, "a.b.c", headers={"X-Forwarded-For": "198.51.100.1"}), httpx.AsyncClient() as client:
            # A second client behind the same proxy: refused only when the proxy's word is not trusted.
            async with client.stream("GET", f"{url}/v1/stream", params={"topic": "a.b.c"}, headers=behind) as second:
                first_bytes = await anext(second.aiter_bytes())
    refused = b"too_many_connections_from_client" in first_bytes
    assert refused == second_is_refused


async def test_process_cap(make_settings: Callable[..., Settings], serve: Serve) -> None:
    settings = make_settings(max_connections=1)
    async with serve(create_app(settings)) as url, events(url, "a.b.c"), httpx.AsyncClient() as client:
        refused = await client.get(f"{url}/v1/stream", params={"topic": "a.b.c"})
        assert refused.text.endswith('event: end\ndata: {"reason":"too_many_connections"}\n\n')
        assert await metric(url, 'telemetry_stream_refused_connections_total{reason="too_many_connections"}') == 1


async def test_connect_rate_limit(make_settings: Callable[..., Settings], serve: Serve) -> None:
    settings = make_settings(max_connects_per_s=0.01)  # one connection now, the next in 100 s
    async with serve(create_app(settings)) as url, events(url, "a.b.c"), httpx.AsyncClient() as client:
        second = await client.get(f"{url}/v1/stream", params={"topic": "a.b.c"})
    assert second.text.endswith('data: {"reason":"connect_rate"}\n\n')


async def test_a_client_that_never_reads_is_cut_off_and_others_are_unaffected(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any
) -> None:
    # Readings go out in rounds smaller than max_buffer_bytes, each once the reader has the one before: the
    # reader is never more than a round behind, whatever the socket buffers and however slowly this test
    # reads, while the client that never reads falls a round further behind each time until it is cut off.
    settings = make_settings(max_buffer_bytes=65_536, slow_consumer_timeout_s=0.3, max_rate_per_s=1e6)
    round_readings, padding = 20, 2000  # about 40 KB a round
    async with serve(create_app(settings)) as url:
        with never_reading(url, "s.>") as stuck:
            async with events(url, "s.>") as reader:
                stored: list[int] = []
                received: list[Any] = []
                async with asyncio.timeout(CUT_OFF_WITHIN_S):
                    while await metric(url, 'telemetry_stream_ended_connections_total{reason="slow_consumer"}') == 0:
                        stored += await publish(
                            "s", "d", "m", [float(i) for i in range(round_readings)], padding=padding
                        )
                        received += await take(reader, round_readings)
                assert seqs(received) == stored  # the reader got everything, in order
            stuck_bytes = await read_until_closed(stuck)
        await metric_becomes(url, "telemetry_stream_connections_active", 0)
        assert await metric(url, "telemetry_stream_events_sent_total") >= len(stored)
    assert stuck_bytes.count(b"\nid: ") + stuck_bytes.startswith(b"id: ") < len(stored)  # cut off before the end


async def test_drain_ends_every_stream_with_a_short_retry(make_settings: Callable[..., Settings], serve: Serve) -> None:
    settings = make_settings(overload_retry_ms=1000)
    app = create_app(settings)
    async with (
        serve(app) as url,
        httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=EVENT_TIMEOUT_S)) as client,
        client.stream("GET", f"{url}/v1/stream", params={"topic": "a.>"}) as first,
        client.stream("GET", f"{url}/v1/stream", params={"topic": "b.>"}) as second,
    ):
        app.state.on_shutdown_signal()  # what the signal handler calls, from outside the server's loop
        for response in (first, second):
            body = (await response.aread()).decode()  # returns once the server closed the stream
            *_, retry, end = body.strip().split("\n\n")
            assert 500 <= int(retry.removeprefix("retry: ")) <= 1000
            assert end == 'event: end\ndata: {"reason":"shutdown"}'
        ready = await client.get(f"{url}/readyz")
        late = await client.get(f"{url}/v1/stream", params={"topic": "a.b.c"})
    assert ready.status_code == 503
    assert late.text.endswith('data: {"reason":"shutdown"}\n\n')


async def test_a_burst_larger_than_the_buffer_is_not_conflated_for_a_client_that_keeps_up(
    make_settings: Callable[..., Settings], serve: Serve, js: Any
) -> None:
    """Frames of one loop turn are all written at its end: only bytes behind a full socket count as slow.

    The burst (about 35 KB) is eight times ``max_buffer_bytes`` but below the 64 KiB a transport of
    asyncio or uvloop takes before it reports the socket full: however small the kernel's socket
    buffers, only the service's own accounting could make it conflate.
    """
    settings = make_settings(max_buffer_bytes=4096, max_rate_per_s=1e6)
    payload = stored_payload(Reading(site="s", device="d", metric="m", value=1.0, tags={"pad": "x" * 250}), NOW)
    async with serve(create_app(settings)) as url, events(url, "s.>") as stream:
        acks = await asyncio.gather(
            *[await js.publish_async(f"{settings.subject_prefix}.s.d.m", payload) for _ in range(100)]
        )
        received = await take(stream, 100)
        assert seqs(received) == [ack.seq for ack in acks]
        assert await metric(url, "telemetry_stream_conflated_readings_total") == 0
