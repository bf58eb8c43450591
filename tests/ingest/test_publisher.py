"""When JetStream does not store everything: every such request is a 503, and retrying with the same ids is safe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import nats
from fastapi import FastAPI
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy
from support.server import on_server_loop

from core.settings import Settings
from ingest.app import create_app
from ingest.publisher import Publisher

Serve = Callable[..., AbstractAsyncContextManager[str]]
JSON = {"Content-Type": "application/json"}
STATE_DEADLINE_S = 15.0


def batch(count: int, prefix: str = "r") -> list[dict[str, Any]]:
    """Readings with ids ``prefix-0`` ... on one topic."""
    return [{"site": "s", "device": "d", "metric": "m", "value": n, "id": f"{prefix}-{n}"} for n in range(count)]


def unavailable(response: httpx.Response, settings: Settings) -> str:
    """The message of a 503, after checking its status, code and Retry-After."""
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == str(settings.retry_after_s)
    error = response.json()["error"]
    assert error["code"] == "unavailable"
    message: str = error["message"]
    return message


def publisher_of(app: FastAPI) -> Publisher:
    publisher: Publisher = app.state.publisher
    return publisher


async def in_flight(app: FastAPI) -> int:
    """Readings of the served app waiting for their acknowledgement, read on the server's own loop."""

    async def count() -> int:
        return publisher_of(app).in_flight()

    return await on_server_loop(app, count())


async def readyz_becomes(client: httpx.AsyncClient, url: str, status: int) -> None:
    """Poll /readyz until it answers ``status``: the link's state is only visible through the probe."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STATE_DEADLINE_S
    while (await client.get(f"{url}/readyz")).status_code != status:
        assert loop.time() < deadline, f"/readyz did not become {status}"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def jetstream(url: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(url)
    try:
        yield nc.jetstream()
    finally:
        await nc.drain()


async def test_partly_stored_batch_is_503_and_a_retry_with_the_same_ids_stores_each_once(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    readings = batch(4)
    async with serve(create_app(settings)) as url:
        # The stream refuses what does not fit: the first two readings are stored, the last two refused.
        config = (await js.stream_info(settings.stream_name)).config
        await js.update_stream(replace(config, discard=DiscardPolicy.NEW, max_msgs=2))
        partial = await client.post(f"{url}/v1/readings", json=readings)

        message = unavailable(partial, settings)
        assert "maximum messages exceeded" in message
        assert "2 of 4 readings were acknowledged" in message
        assert "readings with an id are de-duplicated" in message
        assert (await js.stream_info(settings.stream_name)).state.messages == 2

        await js.update_stream(config)
        retry = await client.post(f"{url}/v1/readings", json=readings)
        metrics = (await client.get(f"{url}/metrics")).text

    assert retry.status_code == 202, retry.text
    results = retry.json()["results"]
    assert [r["duplicate"] for r in results] == [True, True, False, False]
    assert [r["seq"] for r in results] == [1, 2, 3, 4]
    assert (await js.stream_info(settings.stream_name)).state.messages == 4
    assert 'telemetry_ingest_requests_total{status="503"} 1.0' in metrics
    assert 'telemetry_ingest_readings_total{result="stored"} 4.0' in metrics  # 2 before the 503, 2 in the retry
    assert 'telemetry_ingest_readings_total{result="duplicate"} 2.0' in metrics


async def test_missing_stream_is_503(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    async with serve(create_app(settings)) as url:
        await js.delete_stream(settings.stream_name)
        response = await client.post(f"{url}/v1/readings", json=batch(1))
    assert "no responders" in unavailable(response, settings)


async def test_reading_never_lands_in_another_stream(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    other = f"OTHER{settings.stream_name}"
    async with serve(create_app(settings)) as url:
        await js.delete_stream(settings.stream_name)
        await js.add_stream(name=other, subjects=[f"{settings.subject_prefix}.>"])
        try:
            response = await client.post(f"{url}/v1/readings", json=batch(1))
            assert "expected stream does not match" in unavailable(response, settings)
            assert (await js.stream_info(other)).state.messages == 0
        finally:
            await js.delete_stream(other)


async def test_unacknowledged_publish_times_out_cleans_up_and_its_retry_is_a_duplicate(
    make_settings: Callable[..., Settings], serve: Serve, client: httpx.AsyncClient, own_nats: Any
) -> None:
    settings = make_settings(nats_urls=[own_nats.url], publish_timeout_s=0.3)
    app = create_app(settings)
    async with serve(app) as url:
        own_nats.pause()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            response = await client.post(f"{url}/v1/readings", json=batch(3))
            elapsed = loop.time() - started
            assert await in_flight(app) == 0  # the abandoned futures were cancelled, their slots freed
        finally:
            own_nats.resume()
        # The paused server received the readings and stores them now: the ids make the retry harmless.
        retry = await client.post(f"{url}/v1/readings", json=batch(3))

    message = unavailable(response, settings)
    assert "did not acknowledge 3 reading(s) within 0.3 s" in message
    assert "0 of 3 readings were acknowledged" in message
    assert elapsed >= 0.3  # it waited for the acknowledgements; the server stayed paused until after the answer
    assert retry.status_code == 202, retry.text
    assert [r["duplicate"] for r in retry.json()["results"]] == [True, True, True]


async def test_more_readings_in_flight_than_max_in_flight_is_503(
    make_settings: Callable[..., Settings], serve: Serve, client: httpx.AsyncClient, own_nats: Any
) -> None:
    # Five readings may wait for their acknowledgement; the sixth waits for a free slot, and none comes.
    settings = make_settings(nats_urls=[own_nats.url], publish_timeout_s=0.3, max_in_flight=5)
    app = create_app(settings)
    async with serve(app) as url:
        own_nats.pause()
        try:
            response = await client.post(f"{url}/v1/readings", json=batch(6))
            assert await in_flight(app) == 0
        finally:
            own_nats.resume()
        after = await client.post(f"{url}/v1/readings", json=batch(1, prefix="after"))

    message = unavailable(response, settings)
    assert "too many readings waiting" in message and "max_in_flight 5" in message
    assert "0 of 6 readings were acknowledged" in message
    assert after.status_code == 202, after.text


async def test_in_flight_stays_within_max_in_flight_and_batches_larger_than_it_pass(
    make_settings: Callable[..., Settings], serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    settings = make_settings(max_in_flight=7)
    app = create_app(settings)
    highest = 0
    answered = False

    async def watch() -> None:
        """On the server's loop, between any two of its steps: the highest number in flight."""
        nonlocal highest
        while not answered:
            highest = max(highest, publisher_of(app).in_flight())
            await asyncio.sleep(0)

    async with serve(app) as url:
        watcher = asyncio.ensure_future(on_server_loop(app, watch()))
        try:
            answers = await asyncio.gather(
                *(client.post(f"{url}/v1/readings", json=batch(40, prefix=f"c{n}")) for n in range(4))
            )
        finally:
            answered = True
            await watcher

    assert [a.status_code for a in answers] == [202] * 4  # a request frees its own slots as acknowledgements come
    assert 0 < highest <= 7
    assert (await js.stream_info(settings.stream_name)).state.messages == 160


async def test_lost_connection_fails_fast_and_buffers_nothing(
    make_settings: Callable[..., Settings], serve: Serve, client: httpx.AsyncClient, own_nats: Any
) -> None:
    settings = make_settings(nats_urls=[own_nats.url])
    async with serve(create_app(settings)) as url:
        await asyncio.to_thread(own_nats.stop)
        await readyz_becomes(client, url, 503)
        response = await client.post(f"{url}/v1/readings", json=batch(2))
        await asyncio.to_thread(own_nats.start)
        await readyz_becomes(client, url, 200)
        async with jetstream(own_nats.url) as js:
            # Had the client buffered the readings, they would have been sent on reconnect.
            assert (await js.stream_info(settings.stream_name)).state.messages == 0
            # Buffered readings would also be flushed before these: then these would be duplicates, not seq 1, 2.
            healed = await client.post(f"{url}/v1/readings", json=batch(2))

    message = unavailable(response, settings)
    assert "not connected to NATS" in message and "nothing was stored" in message
    assert healed.status_code == 202, healed.text
    assert healed.json()["results"] == [
        {"topic": "s.d.m", "seq": 1, "duplicate": False},
        {"topic": "s.d.m", "seq": 2, "duplicate": False},
    ]


async def test_unconfirmed_stream_is_503(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    # Another stream owns the subjects: the service's stream cannot be created, so it is never confirmed.
    other = f"OTHER{settings.stream_name}"
    await js.add_stream(name=other, subjects=[f"{settings.subject_prefix}.>"])
    try:
        async with serve(create_app(settings), ready=False) as url:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STATE_DEADLINE_S
            while (await client.get(f"{url}/readyz")).json()["reason"] == "not connected to NATS":
                assert loop.time() < deadline, "never connected to NATS"
                await asyncio.sleep(0.05)
            ready = await client.get(f"{url}/readyz")
            response = await client.post(f"{url}/v1/readings", json=batch(1))
        assert (await js.stream_info(other)).state.messages == 0
    finally:
        await js.delete_stream(other)

    assert ready.status_code == 503
    assert ready.json()["reason"] == f"stream {settings.stream_name} not confirmed yet"
    message = unavailable(response, settings)
    assert f"stream {settings.stream_name} not confirmed yet" in message and "nothing was stored" in message
