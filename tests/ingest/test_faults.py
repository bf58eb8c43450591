"""Faults on a real 3-node JetStream cluster with an R3 stream: no acknowledged reading is lost, none is stored twice.

Devices post batches with unique ids and, like the simulator, retry a refused batch with the same ids
until it is stored. Afterwards the whole stream is read back and compared with what the answers said.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from support.cluster import (
    PHASE_TIMEOUT_S,
    BackgroundWriters,
    NatsCluster,
    jetstream,
    kill_and_restart,
    replicas_current,
    stored_ids,
    stream_leader,
)

from core.settings import Settings
from ingest.app import create_app

Serve = Callable[..., AbstractAsyncContextManager[str]]
PUBLISH_TIMEOUT_S = 1.0
# The longest any answer may take, also during a fault: the publish timeout, and room for a loaded machine
# (a hang would show as the client's own 10 s timeout).
ANSWER_BOUND_S = PUBLISH_TIMEOUT_S + 4.0
RETRY_PAUSE_S = 0.02  # a device's pause before it retries a 503 (shorter than Retry-After: more load in the window)

# The cluster scenarios run on production's event loop only: they are the slowest tests, and not about the loop.
pytestmark = pytest.mark.parametrize("server_loop", ["uvloop"])


@dataclass(frozen=True)
class Answer:
    """One POST as a device saw it."""

    ids: list[str]
    status: int
    elapsed_s: float
    retry_after: str | None
    results: list[dict[str, Any]]


def batch(ids: list[str]) -> list[dict[str, Any]]:
    return [{"site": "s", "device": f"d{n % 7}", "metric": "m", "value": n, "id": i} for n, i in enumerate(ids)]


async def post(client: httpx.AsyncClient, url: str, ids: list[str], timeout_s: float | None = None) -> Answer:
    """POST a batch with these ids; the answer with how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    timeout = httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s
    response = await client.post(f"{url}/v1/readings", json=batch(ids), timeout=timeout)
    results = response.json()["results"] if response.status_code == 202 else []
    return Answer(ids, response.status_code, loop.time() - started, response.headers.get("Retry-After"), results)


async def post_until_stored(client: httpx.AsyncClient, url: str, ids: list[str]) -> list[Answer]:
    """Retry the same batch until it is stored, as a device does; every answer on the way."""
    answers = [await post(client, url, ids)]
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        while answers[-1].status == 503:
            await asyncio.sleep(RETRY_PAUSE_S)
            answers.append(await post(client, url, ids))
    return answers


class Devices(BackgroundWriters):
    """Concurrent devices posting batches of new ids for as long as the test runs."""

    def __init__(self, url: str, devices: int, batch_size: int) -> None:
        super().__init__()
        self.url = url
        self.batch_size = batch_size
        self.answers: list[Answer] = []
        self.run(*(self._device(number) for number in range(devices)))

    async def _device(self, number: int) -> None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            for sent in itertools.count():
                if self.stopping:
                    return
                ids = [f"dev{number}-{sent}-{n}" for n in range(self.batch_size)]
                answers = await post_until_stored(client, self.url, ids)
                self.answers.extend(answers)
                await self.count_stored(len(ids))


def dedup_id(reading: dict[str, Any]) -> str:
    """The ``Nats-Msg-Id`` the ingest gives a reading: its id scoped to its device."""
    return f"{reading['site']}.{reading['device']}.{reading['id']}"


def check_every_answer(answers: list[Answer]) -> None:
    """Only 202s and 503s (with Retry-After), each within the bound: a fault is never a 500 or a hang."""
    assert Counter(a.status for a in answers).keys() <= {202, 503}, Counter(a.status for a in answers)
    assert all(a.retry_after == "1" for a in answers if a.status == 503)
    assert max(a.elapsed_s for a in answers) < ANSWER_BOUND_S


def check_stored_once(stored: dict[int, str], answers: list[Answer]) -> None:
    """Every reading acknowledged is in the stream exactly once, at the sequence its answer gave."""
    assert sorted(Counter(stored.values()).values())[-1:] == [1], "a reading was stored twice"
    seq_of = {reading_id: seq for seq, reading_id in stored.items()}
    for answer in answers:
        if answer.status == 202:
            assert [seq_of.get(i) for i in answer.ids] == [r["seq"] for r in answer.results]


def cluster_settings(make_settings: Callable[..., Settings], cluster: NatsCluster) -> Settings:
    # No per-device rate limit here: these tests are about what is stored, and the devices post as fast as they can.
    return make_settings(
        nats_urls=cluster.urls,
        stream_replicas=3,
        publish_timeout_s=PUBLISH_TIMEOUT_S,
        retry_after_s=1,
        ingest_rate_per_device_per_s=0,
    )


@pytest.mark.parametrize("victim", ["stream leader", "ingest's server"])
async def test_a_node_killed_under_load_loses_no_acknowledged_reading(
    make_settings: Callable[..., Settings], serve: Serve, nats_cluster: NatsCluster, victim: str, fault_rounds: int
) -> None:
    settings = cluster_settings(make_settings, nats_cluster)
    async with serve(create_app(settings)) as url, jetstream(nats_cluster) as js:
        devices = Devices(url, devices=4, batch_size=10)
        try:
            await devices.stored_at_least(400)
            for _ in range(fault_rounds):
                if victim == "stream leader":
                    node = nats_cluster.node(await stream_leader(js, settings.stream_name))
                else:
                    node = await nats_cluster.serving("ingest")
                await kill_and_restart(node, js, settings.stream_name, devices, readings=600)
        finally:
            await devices.stop()
        stored = await stored_ids(js, settings.stream_name, f"{settings.subject_prefix}.>", dedup_id)

    check_every_answer(devices.answers)
    # Every batch was retried until it got its 202, so the stream holds exactly the readings sent, each once.
    sent = {i for answer in devices.answers for i in answer.ids}
    assert sorted(stored.values()) == sorted(sent)
    check_stored_once(stored, devices.answers)


async def test_whole_cluster_down_is_503_and_the_service_heals_when_it_is_back(
    make_settings: Callable[..., Settings], serve: Serve, nats_cluster: NatsCluster, client: httpx.AsyncClient
) -> None:
    settings = cluster_settings(make_settings, nats_cluster)
    before_ids = [f"before-{n}" for n in range(10)]
    during_ids = [f"during-{n}" for n in range(10)]
    async with serve(create_app(settings)) as url:
        before = await post(client, url, before_ids)
        for node in nats_cluster.nodes:
            node.kill()
        down = [await post(client, url, during_ids) for _ in range(5)]
        ready_while_down = await client.get(f"{url}/readyz")

        await asyncio.to_thread(nats_cluster.start)
        # The same process, never restarted: it reconnects by itself, then the retried batch is stored.
        healed = await post_until_stored(client, url, during_ids)
        again = await post(client, url, before_ids)
        async with jetstream(nats_cluster) as js:
            stored = await stored_ids(js, settings.stream_name, f"{settings.subject_prefix}.>", dedup_id)

    assert before.status == 202
    assert [a.status for a in down] == [503] * 5
    assert ready_while_down.status_code == 503
    check_every_answer([before, *down, *healed, again])
    assert healed[-1].status == 202
    # What was acknowledged before the outage survived it, and its retry is recognised as a duplicate.
    assert again.status == 202 and again.results == [{**r, "duplicate": True} for r in before.results]
    assert sorted(stored.values()) == sorted(before_ids + during_ids)
    check_stored_once(stored, [before, healed[-1], again])


@pytest.mark.parametrize("leader_then", ["resumes", "dies"])
async def test_a_client_retrying_after_its_timeout_stores_each_reading_once(
    make_settings: Callable[..., Settings],
    serve: Serve,
    nats_cluster: NatsCluster,
    client: httpx.AsyncClient,
    leader_then: str,
) -> None:
    settings = cluster_settings(make_settings, nats_cluster)
    first_ids = [f"first-{n}" for n in range(10)]
    retried_ids = [f"retried-{n}" for n in range(10)]
    async with serve(create_app(settings)) as url, jetstream(nats_cluster) as js:
        first = await post(client, url, first_ids)
        leader = nats_cluster.node(await stream_leader(js, settings.stream_name))
        leader.pause()  # the readings reach the cluster, the acknowledgements do not come back
        with pytest.raises(httpx.ReadTimeout):
            await post(client, url, retried_ids, timeout_s=0.3)
        if leader_then == "resumes":
            leader.resume()  # well before an election: the same leader stores what it had received
        else:
            leader.kill()  # the two others elect a new leader; what the old one received may be lost
        retries = await post_until_stored(client, url, retried_ids)
        again = await post(client, url, first_ids)
        if leader_then == "dies":
            await asyncio.to_thread(leader.start)
        await replicas_current(js, settings.stream_name)
        stored = await stored_ids(js, settings.stream_name, f"{settings.subject_prefix}.>", dedup_id)

    check_every_answer([first, *retries, again])
    assert again.results == [{**r, "duplicate": True} for r in first.results]
    assert sorted(stored.values()) == sorted(first_ids + retried_ids)
    check_stored_once(stored, [first, retries[-1], again])
    if leader_then == "resumes":
        # The first attempt was stored after the client gave up: the retry says so, reading by reading.
        assert [r["duplicate"] for r in retries[-1].results] == [True] * 10
