"""Faults on a real 3-node JetStream cluster with an R3 stream: a dashboard's stream stays open and misses nothing.

A publisher stores readings with unique ids (retrying with the same id until JetStream acknowledges),
a node is SIGKILLed and started again, and afterwards the dashboard's events are compared with the
whole stream read back: every stored reading once, in stream order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime

import nats.errors
import pytest
from httpx_sse import ServerSentEvent
from nats.js import JetStreamContext
from support.cluster import (
    PHASE_TIMEOUT_S,
    BackgroundWriters,
    NatsCluster,
    jetstream,
    kill_and_restart,
    stored_ids,
    stream_leader,
)
from support.sse import Serve, events

from core.readings import Reading, stored_payload
from core.settings import Settings
from core.topics import Subjects
from stream.app import create_app

FEED_CONNECTION = "stream-live"  # the name the live feed's own NATS connection gives itself

# The cluster scenarios run on production's event loop only: they are the slowest tests, and not about the loop.
pytestmark = pytest.mark.parametrize("server_loop", ["uvloop"])


class Publisher(BackgroundWriters):
    """Stores readings one after another; each is retried with its id until acknowledged, as a device would."""

    def __init__(self, js: JetStreamContext, settings: Settings) -> None:
        super().__init__()
        self.js = js
        self.settings = settings
        self.run(self._publish())

    async def _publish(self) -> None:
        subjects = Subjects(self.settings.subject_prefix)
        for number in itertools.count():
            if self.stopping:
                return
            reading = Reading(site="plant", device=f"d{number % 5}", metric="m", value=number, id=f"r{number}")
            payload = stored_payload(reading, datetime.now(UTC))
            while True:
                try:
                    await self.js.publish(
                        subjects.for_topic(reading.topic),
                        payload,
                        stream=self.settings.stream_name,
                        headers={"Nats-Msg-Id": f"r{number}"},
                        timeout=1.0,
                    )
                    break
                except (nats.errors.Error, TimeoutError):
                    await asyncio.sleep(0.05)
            await self.count_stored(1)


@pytest.mark.parametrize("victim", ["the live feed's server", "stream leader"])
async def test_a_node_killed_under_load_costs_a_dashboard_no_reading(
    make_settings: Callable[..., Settings], serve: Serve, nats_cluster: NatsCluster, victim: str, fault_rounds: int
) -> None:
    settings = make_settings(nats_urls=nats_cluster.urls, stream_replicas=3, max_rate_per_s=1_000_000)
    received: list[ServerSentEvent] = []
    got_through = asyncio.Condition()
    async with serve(create_app(settings)) as url, jetstream(nats_cluster) as js, events(url, "plant.>") as stream:

        async def follow() -> None:
            async for event in stream:
                if event.event == "reading":
                    async with got_through:
                        received.append(event)
                        got_through.notify_all()

        follower = asyncio.create_task(follow())
        publisher = Publisher(js, settings)
        try:
            await publisher.stored_at_least(300)
            for _ in range(fault_rounds):
                if victim == "stream leader":
                    node = nats_cluster.node(await stream_leader(js, settings.stream_name))
                else:
                    node = await nats_cluster.serving(FEED_CONNECTION)
                await kill_and_restart(node, js, settings.stream_name, publisher, readings=300)
        finally:
            await publisher.stop()
        stored = await stored_ids(js, settings.stream_name, f"{settings.subject_prefix}.>")
        async with asyncio.timeout(PHASE_TIMEOUT_S), got_through:
            await got_through.wait_for(lambda: bool(received) and int(received[-1].id) >= max(stored))
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower

    assert [int(event.id) for event in received] == sorted(stored)
    assert [json.loads(event.data)["id"] for event in received] == [stored[seq] for seq in sorted(stored)]
