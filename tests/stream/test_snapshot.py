"""``snapshot=latest`` and ``since=`` over real HTTP against a real JetStream: the latest reading of every topic at
once, the history since a time, both together, then live, every reading once and in stream order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from httpx_sse import ServerSentEvent
from support.sse import Serve, events, seqs, take

from core.settings import Settings
from stream.app import create_app

SENTINEL = -1.0


def readings(received: list[ServerSentEvent]) -> list[ServerSentEvent]:
    return [event for event in received if event.event == "reading"]


def topics_and_values(received: list[ServerSentEvent]) -> list[tuple[str, float]]:
    return [(json.loads(e.data)["topic"], json.loads(e.data)["value"]) for e in readings(received)]


async def test_a_snapshot_is_the_latest_reading_of_each_topic_in_stream_order_then_live(
    settings: Settings, serve: Serve, publish: Any
) -> None:
    await publish("s", "a", "t", [1, 2])
    await publish("s", "b", "t", [10])
    await publish("s", "a", "t", [3])
    await publish("other", "a", "t", [99])  # not matched
    async with serve(create_app(settings)) as url, events(url, "s.>", snapshot="latest") as stream:
        snapshot = await take(stream, 2)
        live = await publish("s", "b", "t", [11])
        (after,) = await take(stream, 1)
    assert topics_and_values(snapshot) == [("s.b.t", 10), ("s.a.t", 3)]  # in stream order: b's 10 came before a's 3
    assert seqs(snapshot) == sorted(seqs(snapshot))  # ids are the readings' sequences, so a resume is exact
    assert seqs([after]) == live


async def test_a_client_that_drops_mid_snapshot_resumes_by_its_last_id_and_loses_nothing(
    settings: Settings, serve: Serve, publish: Any
) -> None:
    await publish("s", "a", "t", [1])
    await publish("s", "b", "t", [10])
    await publish("s", "a", "t", [2])
    await publish("s", "c", "t", [20])
    await publish("s", "b", "t", [11])
    async with serve(create_app(settings)) as url:
        async with events(url, "s.>", snapshot="latest") as stream:
            (first,) = await take(stream, 1)  # then the connection drops, as a browser's can
        headers = {"Last-Event-ID": first.id}  # what EventSource sends when it reconnects (the URL unchanged)
        async with events(url, "s.>", snapshot="latest", headers=headers) as stream:
            rest = await take(stream, 2)
    assert topics_and_values([first, *rest]) == [("s.a.t", 2), ("s.c.t", 20), ("s.b.t", 11)]
    assert seqs([first, *rest]) == sorted(set(seqs([first, *rest])))


async def test_readings_stored_while_a_snapshot_is_taken_arrive_once_after_it(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any
) -> None:
    """Each topic's readings, as a client sees them: its latest when the stream opened, then all that followed."""
    settings = make_settings(max_rate_per_s=1e6)  # no conflation: every reading must arrive
    topics = [f"d{number}" for number in range(20)]
    published: dict[str, list[int]] = {topic: [] for topic in topics}
    for topic in topics:
        published[topic] += await publish("race", topic, "m", [0.0, 1.0])

    async def keep_publishing() -> None:
        for value in range(2, 40):
            for topic in topics:
                published[topic] += await publish("race", topic, "m", [float(value)])

    async with serve(create_app(settings)) as url:
        publisher = asyncio.create_task(keep_publishing())
        clients = []
        for _ in range(4):
            clients.append(asyncio.create_task(collect_until_sentinels(url, len(topics))))
            await asyncio.sleep(0)  # each opens at another moment of the publishing
        await publisher
        for topic in topics:
            published[topic] += await publish("race", topic, "m", [SENTINEL])
        received = await asyncio.gather(*clients)
    for per_client in received:
        assert per_client.keys() == published.keys()
        for topic, got in per_client.items():
            # A suffix of what was stored for the topic: its latest when the snapshot was taken, then every later one.
            assert got == published[topic][-len(got) :], topic


async def collect_until_sentinels(url: str, topic_count: int) -> dict[str, list[int]]:
    """Sequences received per device until every device's sentinel came."""
    per_topic: dict[str, list[int]] = {}
    ended: set[str] = set()
    async with events(url, "race.>", snapshot="latest") as stream:
        while len(ended) < topic_count:
            for event in readings(await take(stream, 1)):
                data = json.loads(event.data)
                per_topic.setdefault(data["device"], []).append(data["seq"])
                if data["value"] == SENTINEL:
                    ended.add(data["device"])
    return per_topic


async def test_a_snapshot_beyond_its_limit_is_the_most_recently_updated_topics_after_a_reset(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any
) -> None:
    settings = make_settings(max_snapshot_topics=2)
    for device in ("a", "b", "c"):
        await publish("s", device, "t", [1])
    async with serve(create_app(settings)) as url, events(url, "s.>", snapshot="latest") as stream:
        reset, *snapshot = await take(stream, 3)
    assert reset.event == "reset"
    assert json.loads(reset.data) == {"reason": "snapshot_limit", "topics": 3, "limit": 2}
    assert [device for (device, _) in topics_and_values(snapshot)] == ["s.b.t", "s.c.t"]


async def test_since_replays_what_was_stored_from_that_time_then_live(
    settings: Settings, serve: Serve, publish: Any
) -> None:
    await publish("s", "a", "t", [1, 2])
    moment = datetime.now(UTC)  # after the first two were acknowledged, so stored, and before the next two
    later = await publish("s", "a", "t", [3, 4])
    async with serve(create_app(settings)) as url, events(url, "s.>", since=moment.isoformat()) as stream:
        history = await take(stream, 2)
        live = await publish("s", "a", "t", [5])
        (after,) = await take(stream, 1)
    assert seqs(history) == later
    assert seqs([after]) == live


async def test_since_and_snapshot_give_each_topics_state_before_that_time_then_the_history_since(
    settings: Settings, serve: Serve, publish: Any
) -> None:
    await publish("s", "a", "t", [1, 2])
    await publish("s", "b", "t", [10])
    moment = datetime.now(UTC)
    await publish("s", "a", "t", [3])
    await publish("s", "c", "t", [20])
    async with serve(create_app(settings)) as url:
        async with events(url, "s.>", since=moment.isoformat(), snapshot="latest") as stream:
            received = await take(stream, 4)
        async with events(url, "s.>", since="-1h", snapshot="latest") as stream:  # before everything: no state
            everything = await take(stream, 5)
    # a's 2 and b's 10 were the state at that time (a's 1 was not news by then), then the history in order.
    assert topics_and_values(received) == [("s.a.t", 2), ("s.b.t", 10), ("s.a.t", 3), ("s.c.t", 20)]
    assert seqs(received) == sorted(seqs(received))
    assert [value for (_, value) in topics_and_values(everything)] == [1, 2, 10, 3, 20]


async def test_since_beyond_max_replay_resets_naming_the_time_asked_for(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any
) -> None:
    settings = make_settings(max_replay=2)
    stored = await publish("s", "a", "t", [1, 2, 3, 4])
    async with serve(create_app(settings)) as url, events(url, "s.>", since="2020-01-01T00:00:00Z") as stream:
        reset, *replayed = await take(stream, 3)
    assert json.loads(reset.data) == {
        "reason": "replay_limit",
        "requested_time": "2020-01-01T00:00:00.000000Z",
        "first_available_id": stored[2],
    }
    assert seqs(replayed) == stored[2:]


async def test_a_since_after_every_stored_reading_is_live_only(settings: Settings, serve: Serve, publish: Any) -> None:
    await publish("s", "a", "t", [1])
    async with serve(create_app(settings)) as url, events(url, "s.>", since="2999-01-01T00:00:00+01:00") as stream:
        live = await publish("s", "a", "t", [2])
        assert seqs(await take(stream, 1)) == live


async def test_the_browsers_reconnect_resumes_by_id_whatever_the_url_asked_for_first(
    settings: Settings, serve: Serve, publish: Any
) -> None:
    stored = await publish("s", "a", "t", [1, 2, 3])
    headers = {"Last-Event-ID": str(stored[1])}
    async with (
        serve(create_app(settings)) as url,
        events(url, "s.>", since="-1h", snapshot="latest", headers=headers) as stream,
    ):
        assert seqs(await take(stream, 1)) == stored[2:]


async def test_last_event_id_with_since_or_snapshot_is_a_400_naming_it(settings: Settings, serve: Serve) -> None:
    async with serve(create_app(settings)) as url, httpx.AsyncClient() as client:
        for extra in ({"since": "-1m"}, {"snapshot": "latest"}):
            answer = await client.get(f"{url}/v1/stream", params={"topic": "s.>", "last_event_id": "3", **extra})
            assert answer.status_code == 400
            assert answer.json()["error"]["field"] == "last_event_id"
        for params, field in (({"since": "yesterday"}, "since"), ({"snapshot": "all"}, "snapshot")):
            answer = await client.get(f"{url}/v1/stream", params={"topic": "s.>", **params})
            assert answer.status_code == 400
            assert answer.json()["error"]["field"] == field
