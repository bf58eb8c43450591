"""The live feed carries what the process's streams follow, and changes as they come and go, losing nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from httpx_sse import ServerSentEvent
from nats.js import JetStreamContext
from support.metrics import metric, metric_becomes
from support.sse import EVENT_TIMEOUT_S, Serve, events, seqs, take

import stream.hub
from core.settings import Settings
from stream.app import create_app

UPSTREAM = "telemetry_stream_upstream_messages_total"
FILTERS = "telemetry_stream_live_feed_filters"


async def consumers(js: JetStreamContext, settings: Settings) -> int:
    return (await js.stream_info(settings.stream_name)).state.consumer_count


async def consumers_become(js: JetStreamContext, settings: Settings, count: int) -> None:
    """Poll the stream's consumer count (the server deletes one a moment after it is asked to)."""
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while True:
            if await consumers(js, settings) == count:
                return
            await asyncio.sleep(0.02)


async def readings_until(stream: AsyncIterator[ServerSentEvent], last: int) -> list[int]:
    """Ids of the reading events up to and including ``last``."""
    received: list[int] = []
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        async for event in stream:
            if event.event == "reading":
                received.append(int(event.id))
                if received[-1] >= last:
                    return received
    raise AssertionError(f"the stream ended before {last}: {received}")


@pytest.fixture
def shrink_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    """Interest gone leaves the filters after a moment, not the service's ten seconds."""
    monkeypatch.setattr(stream.hub, "SHRINK_AFTER_S", 0.1)


@pytest.mark.usefixtures("shrink_soon")
async def test_a_process_consumes_only_what_its_streams_follow(
    settings: Settings, serve: Serve, publish: Any, js: JetStreamContext
) -> None:
    async with serve(create_app(settings)) as url:
        await publish("a", "d", "m", [1.0])
        assert await consumers(js, settings) == 0  # nobody follows anything: nothing is consumed
        async with events(url, "a.>") as stream:
            assert await metric(url, FILTERS) == 1
            sent = []
            for value in range(3):
                await publish("b", "d", "m", [float(value)])  # before each reading of a: it would come first
                sent += await publish("a", "d", "m", [float(value)])
            assert seqs(await take(stream, 3)) == sent
            assert await metric(url, UPSTREAM) == 3  # none of b's readings came to this process
        await consumers_become(js, settings, 0)  # ... once the last stream is gone a while


@pytest.mark.usefixtures("shrink_soon")
async def test_a_stream_on_a_new_site_misses_nothing_and_costs_the_others_nothing(
    settings: Settings, serve: Serve, publish: Any
) -> None:
    """A second site is followed while readings of both flow: the first stream gets every one of its site's readings,
    the second every one of its own from its first event on, including all published once it had its response."""
    published: dict[str, list[int]] = {"a": [], "b": []}
    after_head: list[int] = []
    second_open = asyncio.Event()
    enough = asyncio.Event()

    async def devices() -> None:
        value = 0.0
        while not enough.is_set():
            for site in ("a", "b"):
                opened = second_open.is_set()
                published[site] += await publish(site, "d", "m", [value])
                if site == "b" and opened:
                    after_head.append(published["b"][-1])
                    if len(after_head) == 20:
                        enough.set()
            value += 1

    async with serve(create_app(settings)) as url, events(url, "a.>") as first:
        devices_task = asyncio.create_task(devices())
        try:
            async with events(url, "b.>") as second:
                second_open.set()
                await asyncio.wait_for(enough.wait(), EVENT_TIMEOUT_S)
                await devices_task
                got_b = await readings_until(second, published["b"][-1])
                assert await metric(url, FILTERS) == 2
            got_a = await readings_until(first, published["a"][-1])
            await metric_becomes(url, FILTERS, 1)  # b's stream is gone: the filters shrink back to a's site
            changes = await metric(url, "telemetry_stream_live_feed_filter_changes_total")
            resets = await metric(url, "telemetry_stream_live_feed_resets_total")
        finally:
            enough.set()
            await devices_task
    assert got_a == published["a"]
    assert got_b == [seq for seq in published["b"] if seq >= got_b[0]]  # no gap, no duplicate
    assert set(after_head) <= set(got_b)
    assert changes == 3  # made for a.>, again for both, again for a.> alone
    assert resets == 0  # a change of filters is no fault


async def test_a_resume_on_a_pattern_not_followed_yet_replays_up_to_the_live_feed(
    settings: Settings, serve: Serve, publish: Any
) -> None:
    async with serve(create_app(settings)) as url, events(url, "a.>"):
        stored = await publish("b", "d", "m", [1.0, 2.0, 3.0])
        more = asyncio.create_task(publish("b", "d", "m", [float(v) for v in range(4, 40)]))
        async with events(url, "b.>", last_event_id=stored[0]) as resumed:
            later = await more
            got = await readings_until(resumed, later[-1])
        assert got == stored[1:] + later


async def test_partly_overlapping_patterns_are_followed_each_reading_once(
    settings: Settings, serve: Serve, publish: Any
) -> None:
    """JetStream takes filters that overlap in part (it refuses only one covering another), and sends a reading
    both match once."""
    async with serve(create_app(settings)) as url, events(url, "a.*.t") as first, events(url, "*.d.t") as second:
        assert await metric(url, FILTERS) == 2
        sent = await publish("a", "d", "t", [1.0])
        sent += await publish("a", "x", "t", [2.0])
        sent += await publish("b", "d", "t", [3.0])
        assert seqs(await take(first, 2)) == sent[:2]
        assert seqs(await take(second, 2)) == [sent[0], sent[2]]
        assert await metric(url, UPSTREAM) == 3


async def test_past_its_filter_limit_a_process_follows_everything(
    make_settings: Any, serve: Serve, publish: Any
) -> None:
    settings = make_settings(live_feed_max_filters=1)
    async with serve(create_app(settings)) as url, events(url, "a.>") as first, events(url, "b.>"):
        assert await metric(url, FILTERS) == 1
        elsewhere = await publish("c", "d", "m", [1.0])
        sent = await publish("a", "d", "m", [2.0])
        assert seqs(await take(first, 1)) == sent
        assert await metric(url, UPSTREAM) == len(elsewhere + sent)  # c's reading came too: the filter is '>'
