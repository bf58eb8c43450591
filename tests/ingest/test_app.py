"""POST /v1/readings over a real socket against a real nats-server: what is stored, and every error answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext
from support.metrics import metric, metric_becomes

from core.settings import Settings
from ingest.app import create_app

Serve = Callable[..., AbstractAsyncContextManager[str]]
JSON = {"Content-Type": "application/json"}


def reading(**fields: Any) -> dict[str, Any]:
    """A valid reading, with some fields replaced."""
    return {"site": "plant1", "device": "boiler-7", "metric": "temperature", "value": 21.5, **fields}


async def message_count(js: JetStreamContext, settings: Settings) -> int:
    info = await js.stream_info(settings.stream_name)
    return info.state.messages


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error object of an answer, after checking its status and code."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    return error


async def test_single_reading_is_stored(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    sent = reading(id="boiler-7-000001", unit="C", tags={"room": "east"}, ts="2026-11-27T08:00:00+01:00")
    before = datetime.now(UTC)
    async with serve(create_app(settings)) as url:
        response = await client.post(f"{url}/v1/readings", json=sent)
    after = datetime.now(UTC)

    assert response.status_code == 202, response.text
    [result] = response.json()["results"]
    assert result["topic"] == "plant1.boiler-7.temperature"
    assert result["duplicate"] is False
    info = await js.stream_info(settings.stream_name)
    assert info.state.messages == 1
    assert info.state.last_seq == result["seq"]

    stored = await js.get_msg(settings.stream_name, result["seq"])
    assert stored.subject == f"{settings.subject_prefix}.plant1.boiler-7.temperature"
    assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == "plant1.boiler-7.boiler-7-000001"
    assert stored.data is not None
    payload = json.loads(stored.data)
    received_at = datetime.fromisoformat(payload.pop("received_at"))
    assert before <= received_at <= after
    assert payload == {
        "topic": "plant1.boiler-7.temperature",
        "device": "boiler-7",
        "metric": "temperature",
        "value": 21.5,
        "site": "plant1",
        "unit": "C",
        "tags": {"room": "east"},
        "id": "boiler-7-000001",
        "ts": "2026-11-27T07:00:00.000000Z",
    }


async def test_a_stream_deleted_at_run_time_is_created_again(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    async with serve(create_app(settings)) as url:
        assert (await client.post(f"{url}/v1/readings", json=reading(id="r1"))).status_code == 202
        await js.delete_stream(settings.stream_name)
        refused = await client.post(f"{url}/v1/readings", json=reading(id="r2"))
        assert "the stream may be missing" in error_of(refused, 503, "unavailable")["message"]
        # The refusal made the service check the stream and create it again: a device retrying gets in.
        async with asyncio.timeout(10):
            while (retried := await client.post(f"{url}/v1/readings", json=reading(id="r2"))).status_code != 202:
                error_of(retried, 503, "unavailable")
                await asyncio.sleep(0.05)
    assert retried.json()["results"][0]["seq"] == 1
    assert await message_count(js, settings) == 1


async def test_batch_is_stored_in_request_order(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    batch = [reading(device=f"dev-{n}", value=float(n)) for n in range(20)]
    async with serve(create_app(settings)) as url:
        response = await client.post(f"{url}/v1/readings", json=batch)

    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["topic"] for r in results] == [f"plant1.dev-{n}.temperature" for n in range(20)]
    seqs = [r["seq"] for r in results]
    assert seqs == list(range(seqs[0], seqs[0] + 20))
    assert await message_count(js, settings) == 20
    for n, seq in enumerate(seqs):
        stored = await js.get_msg(settings.stream_name, seq)
        assert stored.data is not None
        assert json.loads(stored.data)["value"] == float(n)
        assert stored.headers is None or "Nats-Msg-Id" not in stored.headers


async def test_one_bad_reading_stores_nothing_and_names_every_bad_item(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    batch = [reading(), reading(value="hot"), reading(), reading(device="a.b", metric="*"), reading()]
    async with serve(create_app(settings)) as url:
        assert (await client.post(f"{url}/v1/readings", json=reading())).status_code == 202
        response = await client.post(f"{url}/v1/readings", json=batch)

    error = error_of(response, 422, "invalid_readings")
    assert [(d["index"], d["field"]) for d in error["details"]] == [(1, "value"), (3, "device"), (3, "metric")]
    assert "2 of 5 readings are invalid" in error["message"]
    assert await message_count(js, settings) == 1


async def test_same_id_is_stored_once(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    sent = reading(id="boiler-7-000042")
    async with serve(create_app(settings)) as url:
        first = await client.post(f"{url}/v1/readings", json=sent)
        again = await client.post(f"{url}/v1/readings", json=[reading(id="boiler-7-000043"), sent])

    assert first.status_code == 202 and again.status_code == 202
    [original] = first.json()["results"]
    new, repeated = again.json()["results"]
    assert original["duplicate"] is False and new["duplicate"] is False
    assert repeated == {**original, "duplicate": True}
    assert await message_count(js, settings) == 2


async def test_ids_need_only_be_unique_per_device(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    # JetStream de-duplicates per stream: with the id alone, the victim's reading was taken for a retry of the
    # other device's, answered duplicate, and not stored.
    other = reading(site="evil", device="x", id="X")
    victim = reading(site="plant1", device="victim", id="X")
    longest = reading(site="s" * 64, device="d" * 64, id="~" * 128)
    async with serve(create_app(settings)) as url:
        first = await client.post(f"{url}/v1/readings", json=[other, longest])
        second = await client.post(f"{url}/v1/readings", json=victim)
        retried = await client.post(f"{url}/v1/readings", json=[victim, longest])

    assert [r["duplicate"] for r in first.json()["results"] + second.json()["results"]] == [False] * 3
    stored_other, stored_longest = first.json()["results"]
    [stored_victim] = second.json()["results"]
    assert stored_victim["seq"] != stored_other["seq"]
    assert retried.json()["results"] == [{**stored_victim, "duplicate": True}, {**stored_longest, "duplicate": True}]
    assert await message_count(js, settings) == 3
    message = await js.get_msg(settings.stream_name, stored_longest["seq"])
    assert message.headers is not None and message.headers["Nats-Msg-Id"] == f"{'s' * 64}.{'d' * 64}.{'~' * 128}"


async def test_malformed_json_is_400_with_the_position(
    settings: Settings, serve: Serve, client: httpx.AsyncClient
) -> None:
    async with serve(create_app(settings)) as url:
        broken = await client.post(f"{url}/v1/readings", content=b'{"device": "a",\n "value": }', headers=JSON)
        not_utf8 = await client.post(f"{url}/v1/readings", content=b'{"device": "\xff"}', headers=JSON)
        empty = await client.post(f"{url}/v1/readings", content=b"", headers=JSON)
        too_deep = await client.post(f"{url}/v1/readings", content=b"[" * 100_000 + b"]" * 100_000, headers=JSON)
        long_number = await client.post(f"{url}/v1/readings", content=b"1" * 5000, headers=JSON)

    assert "line 2 column 11" in error_of(broken, 400, "malformed_json")["message"]
    assert "not UTF-8" in error_of(not_utf8, 400, "malformed_json")["message"]
    assert "line 1 column 1" in error_of(empty, 400, "malformed_json")["message"]
    assert "nested too deeply" in error_of(too_deep, 400, "malformed_json")["message"]
    assert "digits" in error_of(long_number, 400, "malformed_json")["message"]


async def test_body_over_the_limit_is_413(
    make_settings: Callable[..., Settings], serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    settings = make_settings(max_body_bytes=200)
    body = json.dumps([reading()] * 4).encode()
    assert len(body) > 200

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 50):
            yield body[start : start + 50]

    async with serve(create_app(settings)) as url:
        declared = await client.post(f"{url}/v1/readings", content=body, headers=JSON)
        chunked = await client.post(f"{url}/v1/readings", content=chunks(), headers=JSON)
        within = await client.post(f"{url}/v1/readings", json=reading())

    assert "200 bytes" in error_of(declared, 413, "body_too_large")["message"]
    assert "transfer-encoding" in chunked.request.headers  # no Content-Length: the limit is found while reading
    error_of(chunked, 413, "body_too_large")
    assert within.status_code == 202
    assert await message_count(js, settings) == 1


async def test_declared_length_over_the_limit_is_refused_before_the_body_is_sent(
    settings: Settings, serve: Serve
) -> None:
    async with serve(create_app(settings)) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/readings HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5.0)
        writer.close()
        await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json-seq",
        "application/json; charset=latin1",
    ],
)
async def test_wrong_content_type_is_415(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with serve(create_app(settings)) as url:
        response = await client.post(f"{url}/v1/readings", content=json.dumps(reading()).encode(), headers=headers)
    assert error_of(response, 415, "unsupported_media_type")["field"] == "Content-Type"


async def test_json_with_a_charset_parameter_is_accepted(
    settings: Settings, serve: Serve, client: httpx.AsyncClient
) -> None:
    async with serve(create_app(settings)) as url:
        response = await client.post(
            f"{url}/v1/readings",
            content=json.dumps(reading()).encode(),
            headers={"Content-Type": "Application/JSON; charset=UTF-8"},
        )
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (json.dumps({"device": "d", "metric": "m"}), "value", "Field required"),
        ('{"device": "d", "metric": "m", "value": NaN}', "value", "Input should be a finite number"),
        ('{"device": "d", "metric": "m", "value": 1e999}', "value", "Input should be a finite number"),
        (json.dumps(reading(value="21.5")), "value", "Input should be a valid number"),
        (json.dumps(reading(value=True)), "value", "Input should be a valid number"),
        (json.dumps(reading(device="a.b")), "device", "must be 1-64 characters"),
        (json.dumps(reading(metric="*")), "metric", "must be 1-64 characters"),
        (json.dumps(reading(site=">")), "site", "must be 1-64 characters"),
        (json.dumps(reading(tags={"room": 1})), "tags.room", "Input should be a valid string"),
        (json.dumps(reading(vlaue=1)), "vlaue", "Extra inputs are not permitted"),
        # Numbers beyond a float's range: int-to-float conversions raise OverflowError, which is no 422 by itself.
        ('{"device": "d", "metric": "m", "value": 1, "ts": %s}' % ("9" * 400), "ts", "Value error, ts in epoch"),
        ('{"device": "d", "metric": "m", "value": 1, "ts": -%s}' % ("9" * 400), "ts", "Value error, ts in epoch"),
        ('{"device": "d", "metric": "m", "value": 1, "ts": 1e400}', "ts", "Value error, ts in epoch"),
        ('{"device": "d", "metric": "m", "value": %s}' % ("9" * 400), "value", "Input should be a valid number"),
    ],
)
async def test_invalid_single_reading_is_422_naming_the_field(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, body: str, field: str, message: str
) -> None:
    async with serve(create_app(settings)) as url:
        response = await client.post(f"{url}/v1/readings", content=body.encode(), headers=JSON)
    error = error_of(response, 422, "invalid_readings")
    [detail] = error["details"]
    assert detail["index"] is None
    assert detail["field"] == field
    assert detail["message"].startswith(message)
    assert error["field"] == field


@pytest.mark.parametrize("body", ["[]", "42", '"reading"', "null", "true", "[1]"])
async def test_body_that_is_no_reading_is_422(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, body: str
) -> None:
    async with serve(create_app(settings)) as url:
        response = await client.post(f"{url}/v1/readings", content=body.encode(), headers=JSON)
    error_of(response, 422, "invalid_readings")


async def test_batch_over_max_batch_is_422(
    make_settings: Callable[..., Settings], serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    settings = make_settings(max_batch=3)
    async with serve(create_app(settings)) as url:
        over = await client.post(f"{url}/v1/readings", json=[reading()] * 4)
        at_limit = await client.post(f"{url}/v1/readings", json=[reading()] * 3)
    assert "at most 3" in error_of(over, 422, "batch_too_large")["message"]
    assert at_limit.status_code == 202
    assert await message_count(js, settings) == 3


async def test_unreachable_nats_is_503_with_retry_after(
    make_settings: Callable[..., Settings], serve: Serve, client: httpx.AsyncClient, unused_port: int
) -> None:
    settings = make_settings(nats_urls=[f"nats://127.0.0.1:{unused_port}"], retry_after_s=7)
    async with serve(create_app(settings), ready=False) as url:
        health = await client.get(f"{url}/healthz")
        ready = await client.get(f"{url}/readyz")
        response = await client.post(f"{url}/v1/readings", json=[reading(id="r-1"), reading(id="r-2")])

    assert health.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["reason"].startswith("not connected to NATS")  # and, once an attempt failed, why
    error = error_of(response, 503, "unavailable")
    assert response.headers["Retry-After"] == "7"
    assert "not connected to NATS" in error["message"]
    assert "nothing was stored" in error["message"]


async def test_probes_when_ready(settings: Settings, serve: Serve, client: httpx.AsyncClient) -> None:
    async with serve(create_app(settings)) as url:
        health = await client.get(f"{url}/healthz")
        ready = await client.get(f"{url}/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_metrics_count_answers_and_readings(settings: Settings, serve: Serve, client: httpx.AsyncClient) -> None:
    async with serve(create_app(settings)) as url:
        await client.post(f"{url}/v1/readings", json=[reading(id="m-1"), reading(id="m-2")])
        await client.post(f"{url}/v1/readings", json=reading(id="m-1"))
        await client.post(f"{url}/v1/readings", json=reading(value="hot"))
        await client.post(f"{url}/v1/readings", content=b"{", headers=JSON)
        metrics = (await client.get(f"{url}/metrics")).text

    assert 'telemetry_ingest_requests_total{status="202"} 2.0' in metrics
    assert 'telemetry_ingest_requests_total{status="422"} 1.0' in metrics
    assert 'telemetry_ingest_requests_total{status="400"} 1.0' in metrics
    assert 'telemetry_ingest_readings_total{result="stored"} 2.0' in metrics
    assert 'telemetry_ingest_readings_total{result="duplicate"} 1.0' in metrics
    assert "telemetry_ingest_publish_seconds_count 2.0" in metrics


async def test_openapi_documents_the_body(settings: Settings, serve: Serve, client: httpx.AsyncClient) -> None:
    async with serve(create_app(settings)) as url:
        schema = (await client.get(f"{url}/openapi.json")).json()
    operation = schema["paths"]["/v1/readings"]["post"]
    single, batch = operation["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    assert single["required"] == ["device", "metric", "value"]
    assert batch["maxItems"] == settings.max_batch
    assert "202" in operation["responses"]


async def test_unknown_paths_and_methods_answer_in_the_json_error_shape(
    settings: Settings, serve: Serve, client: httpx.AsyncClient
) -> None:
    async with serve(create_app(settings)) as url:
        missing = await client.get(f"{url}/v1/nope")
        wrong_method = await client.delete(f"{url}/v1/readings")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


async def test_metrics_count_readings_received_rejected_by_reason_and_request_durations(
    make_settings: Callable[..., Settings], serve: Serve, client: httpx.AsyncClient
) -> None:
    settings = make_settings(max_batch=2, ingest_rate_per_device_per_s=0.001, ingest_burst_per_device=2)
    async with serve(create_app(settings)) as url:
        stored = await client.post(f"{url}/v1/readings", json=[reading(), reading()])
        limited = await client.post(f"{url}/v1/readings", json=[reading(), reading()])
        invalid = await client.post(f"{url}/v1/readings", json=[reading(), reading(value="hot")])
        too_many = await client.post(f"{url}/v1/readings", json=[reading(device="x")] * 3)
        malformed = await client.post(f"{url}/v1/readings", content=b"{", headers=JSON)
        assert [r.status_code for r in (stored, limited, invalid, too_many, malformed)] == [202, 429, 422, 422, 400]
        # Observed once the answer has ended, so possibly after the client read it.
        await metric_becomes(url, "telemetry_ingest_request_duration_seconds_count", 5)
        text = (await client.get(f"{url}/metrics")).text

    assert "telemetry_ingest_readings_received_total 4.0" in text  # the two requests that were parsed
    assert 'telemetry_ingest_readings_rejected_total{reason="rate_limited"} 2.0' in text
    assert 'telemetry_ingest_readings_rejected_total{reason="forbidden"} 0.0' in text
    assert 'telemetry_ingest_readings_rejected_total{reason="not_stored"} 0.0' in text
    assert 'telemetry_ingest_requests_rejected_total{reason="rate_limited"} 1.0' in text
    assert 'telemetry_ingest_requests_rejected_total{reason="invalid"} 1.0' in text
    assert 'telemetry_ingest_requests_rejected_total{reason="too_large"} 1.0' in text
    assert 'telemetry_ingest_requests_rejected_total{reason="malformed"} 1.0' in text
    assert 'telemetry_ingest_requests_rejected_total{reason="other"} 0.0' in text
    assert 'telemetry_ingest_request_duration_seconds_bucket{le="30.0"} 5.0' in text


async def test_readings_jetstream_could_not_take_are_counted_not_stored(
    make_settings: Callable[..., Settings], serve: Serve, client: httpx.AsyncClient, unused_port: int
) -> None:
    settings = make_settings(nats_urls=[f"nats://127.0.0.1:{unused_port}"])
    async with serve(create_app(settings), ready=False) as url:
        response = await client.post(f"{url}/v1/readings", json=[reading(), reading()])
        assert response.status_code == 503
        received = await metric(url, "telemetry_ingest_readings_received_total")
        not_stored = await metric(url, 'telemetry_ingest_readings_rejected_total{reason="not_stored"}')
        refused = await metric(url, 'telemetry_ingest_requests_rejected_total{reason="not_stored"}')
        connected = await metric(url, "telemetry_nats_connected")
    assert (received, not_stored, refused, connected) == (2, 2, 1, 0)
