"""The per-device token buckets on a clock of the test's own: rates, bursts, all-or-nothing, bounded memory."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext
from pydantic import ValidationError

from core.readings import Reading
from core.settings import Settings
from ingest.app import create_app
from ingest.ratelimit import MAX_NAMED_DEVICES, DeviceRateLimiter, RateLimited, device_counts

Serve = Callable[..., AbstractAsyncContextManager[str]]


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, rate_per_s: float = 10.0, burst: int = 20, max_devices: int = 1000) -> DeviceRateLimiter:
    return DeviceRateLimiter(rate_per_s, burst, max_devices, clock=clock)


def test_a_device_gets_its_burst_then_its_rate() -> None:
    clock = Clock()
    limits = limiter(clock, rate_per_s=10, burst=20)
    limits.take({"s.a": 20})
    with pytest.raises(RateLimited) as refused:
        limits.take({"s.a": 5})
    assert refused.value.status == 429
    assert refused.value.headers == {"Retry-After": "1"}  # 5 readings at 10/s: half a second, rounded up
    assert refused.value.details == [{"device": "s.a", "retry_after_s": 1}]
    assert "s.a" in refused.value.message and "nothing was stored" in refused.value.message
    clock.now += 0.5
    limits.take({"s.a": 5})


def test_retry_after_is_the_longest_wait_of_the_devices_over_their_rate() -> None:
    clock = Clock()
    limits = limiter(clock, rate_per_s=2, burst=20)
    limits.take({"s.a": 20, "s.b": 14})
    with pytest.raises(RateLimited) as refused:
        limits.take({"s.a": 7, "s.b": 7, "s.c": 20})
    assert refused.value.headers == {"Retry-After": "4"}  # a: 7 at 2/s is 3.5 s; b: 1 at 2/s is 0.5 s
    assert refused.value.details == [{"device": "s.a", "retry_after_s": 4}, {"device": "s.b", "retry_after_s": 1}]
    assert refused.value.message.startswith("2 of 3 devices sent more than 2 readings/s")


def test_a_refused_request_takes_nothing_from_any_device() -> None:
    clock = Clock()
    limits = limiter(clock, rate_per_s=10, burst=20)
    limits.take({"s.busy": 20})
    for _ in range(3):
        with pytest.raises(RateLimited):
            limits.take({"s.quiet": 15, "s.busy": 1})
    limits.take({"s.quiet": 20})  # its tokens were not spent by the refused batches


def test_tokens_given_back_after_a_failed_publish_serve_the_retry() -> None:
    clock = Clock()
    limits = limiter(clock, rate_per_s=1, burst=20)
    limits.take({"s.a": 20})
    limits.give_back({"s.a": 20})
    limits.take({"s.a": 20})
    limits.give_back({"s.a": 1000})  # never more than a full bucket
    with pytest.raises(RateLimited):
        limits.take({"s.a": 21})


def test_idle_devices_are_forgotten() -> None:
    clock = Clock()
    limits = limiter(clock, rate_per_s=10, burst=20)
    limits.take({f"s.d{n}": 20 for n in range(500)})  # empty: full again after 2 s
    assert len(limits) == 500
    clock.now += 1.9  # not full again yet: kept
    limits.take({"s.other": 1})
    assert len(limits) == 501
    clock.now += 0.2  # 2.1 s later: full again, the same as a device never seen
    limits.take({"s.other": 1})
    assert len(limits) == 1


def test_beyond_max_devices_the_least_recently_seen_is_forgotten() -> None:
    clock = Clock()
    limits = limiter(clock, rate_per_s=0.001, burst=5, max_devices=100)
    limits.take({"s.first": 5})
    for n in range(1000):
        limits.take({f"s.d{n}": 1})
        assert len(limits) <= 100
        if n < 98:
            with pytest.raises(RateLimited):  # still tracked: still limited
                limits.take({"s.first": 1})
    limits.take({"s.first": 5})  # forgotten: a full bucket again


def test_the_answer_names_a_bounded_number_of_devices() -> None:
    clock = Clock()
    limits = limiter(clock, rate_per_s=1, burst=1, max_devices=10_000)
    everyone = {f"s.d{n}": 1 for n in range(500)}
    limits.take(everyone)
    with pytest.raises(RateLimited) as refused:
        limits.take(everyone)
    assert refused.value.details is not None and len(refused.value.details) == MAX_NAMED_DEVICES
    assert "500 of 500 devices" in refused.value.message and "and 497 more" in refused.value.message


def test_a_device_is_its_site_and_name() -> None:
    readings = [
        Reading(site="plant1", device="pump", metric="rpm", value=1),
        Reading(site="plant1", device="pump", metric="temperature", value=2),
        Reading(site="plant2", device="pump", metric="rpm", value=3),
    ]
    assert device_counts(readings) == {"plant1.pump": 2, "plant2.pump": 1}


def readings_of(device: str, count: int) -> list[dict[str, Any]]:
    return [
        {"site": "plant1", "device": device, "metric": "m", "value": n, "id": f"{device}-{n}"} for n in range(count)
    ]


async def test_a_device_over_its_rate_is_429_and_nothing_of_the_batch_is_stored(
    make_settings: Callable[..., Settings], serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    settings = make_settings(ingest_rate_per_device_per_s=0.5, ingest_burst_per_device=5, max_batch=5)
    async with serve(create_app(settings)) as url:
        burst = await client.post(f"{url}/v1/readings", json=readings_of("busy", 5))
        mixed = await client.post(f"{url}/v1/readings", json=readings_of("quiet", 4) + readings_of("busy", 1))
        quiet = await client.post(f"{url}/v1/readings", json=readings_of("quiet", 5))
        metrics = (await client.get(f"{url}/metrics")).text

    assert burst.status_code == 202 and quiet.status_code == 202
    assert mixed.status_code == 429, mixed.text
    assert mixed.headers["Retry-After"] == "2"  # one reading at 0.5/s
    error = mixed.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["field"] == "device"
    assert error["details"] == [{"device": "plant1.busy", "retry_after_s": 2}]
    assert "1 of 2 devices" in error["message"] and "nothing was stored" in error["message"]
    # Only the two accepted batches are stored; the quiet device's readings of the refused batch are not.
    assert (await js.stream_info(settings.stream_name)).state.messages == 10
    assert 'telemetry_ingest_requests_total{status="429"} 1.0' in metrics
    assert "telemetry_ingest_rate_tracked_devices 2.0" in metrics


async def test_a_request_that_was_not_stored_costs_the_device_nothing(
    make_settings: Callable[..., Settings], serve: Serve, client: httpx.AsyncClient, unused_port: int
) -> None:
    settings = make_settings(
        nats_urls=[f"nats://127.0.0.1:{unused_port}"],
        ingest_rate_per_device_per_s=0.01,
        ingest_burst_per_device=5,
        max_batch=5,
    )
    async with serve(create_app(settings), ready=False) as url:
        answers = [(await client.post(f"{url}/v1/readings", json=readings_of("d", 5))).status_code for _ in range(3)]
    assert answers == [503, 503, 503]  # each retry is refused for NATS, never for the rate its 503s did not use


async def test_a_rate_of_zero_turns_the_limit_off(
    make_settings: Callable[..., Settings], serve: Serve, client: httpx.AsyncClient
) -> None:
    settings = make_settings(ingest_rate_per_device_per_s=0, ingest_burst_per_device=1, max_batch=50)
    async with serve(create_app(settings)) as url:
        answers = [(await client.post(f"{url}/v1/readings", json=readings_of("d", 50))).status_code for _ in range(3)]
        metrics = (await client.get(f"{url}/metrics")).text
    assert answers == [202, 202, 202]
    assert "telemetry_ingest_rate_tracked_devices" not in metrics


def test_a_burst_smaller_than_a_full_batch_is_refused_at_start_up() -> None:
    with pytest.raises(ValidationError, match="ingest_burst_per_device must be at least max_batch"):
        Settings(max_batch=500, ingest_burst_per_device=499)
    Settings(max_batch=500, ingest_burst_per_device=499, ingest_rate_per_device_per_s=0)  # no limit: no bucket
