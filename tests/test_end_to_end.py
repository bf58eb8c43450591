"""A device posts, a dashboard sees it: both services over real sockets on a real nats-server."""

from __future__ import annotations

import json

import httpx
from support.sse import Serve, events, seqs, take

from core.settings import Settings
from ingest.app import create_app as create_ingest
from stream.app import create_app as create_stream


async def test_posted_readings_arrive_as_events_with_their_stream_sequence(settings: Settings, serve: Serve) -> None:
    batch = [
        {"site": "plant1", "device": "boiler-7", "metric": "temperature", "value": 71.5, "unit": "C", "id": "b7-1"},
        {"site": "plant1", "device": "pump-2", "metric": "pressure", "value": 2.25, "tags": {"line": "a"}},
        {"site": "plant2", "device": "boiler-1", "metric": "temperature", "value": 65.0},
    ]
    async with (
        serve(create_ingest(settings)) as ingest_url,
        serve(create_stream(settings)) as stream_url,
        events(stream_url, "plant1.>") as dashboard,
        httpx.AsyncClient() as device,
    ):
        answer = await device.post(f"{ingest_url}/v1/readings", json=batch)
        assert answer.status_code == 202
        results = answer.json()["results"]
        received = await take(dashboard, 2)
    assert seqs(received) == [results[0]["seq"], results[1]["seq"]]
    assert [event.event for event in received] == ["reading", "reading"]
    first = json.loads(received[0].data)
    assert first["topic"] == "plant1.boiler-7.temperature" == results[0]["topic"]
    assert {k: first[k] for k in ("device", "metric", "value", "unit", "id", "site")} == {
        "device": "boiler-7",
        "metric": "temperature",
        "value": 71.5,
        "unit": "C",
        "id": "b7-1",
        "site": "plant1",
    }
    assert json.loads(received[1].data)["tags"] == {"line": "a"}
