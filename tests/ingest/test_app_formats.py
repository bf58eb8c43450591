"""POST /v1/readings with NDJSON and gzip bodies over a real socket: stored like JSON, refused with the same care."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
from nats.js import JetStreamContext

from core.settings import Settings
from ingest.app import create_app

Serve = Callable[..., AbstractAsyncContextManager[str]]
NDJSON = {"Content-Type": "application/x-ndjson"}


def reading(n: int, **fields: Any) -> dict[str, Any]:
    return {
        "site": "plant1",
        "device": f"dev-{n}",
        "metric": "temperature",
        "value": float(n),
        "id": f"r-{n}",
        **fields,
    }


def ndjson(items: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


async def stored_values(js: JetStreamContext, settings: Settings, seqs: list[int]) -> list[float]:
    values = []
    for seq in seqs:
        message = await js.get_msg(settings.stream_name, seq)
        assert message.data is not None
        values.append(json.loads(message.data)["value"])
    return values


async def test_ndjson_batch_is_stored_in_line_order(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    body = ndjson([reading(n) for n in range(30)])

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):  # chunk boundaries fall inside lines
            yield body[start : start + 100]

    async with serve(create_app(settings)) as url:
        response = await client.post(f"{url}/v1/readings", content=chunks(), headers=NDJSON)

    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["topic"] for r in results] == [f"plant1.dev-{n}.temperature" for n in range(30)]
    assert await stored_values(js, settings, [r["seq"] for r in results]) == [float(n) for n in range(30)]


async def test_gzip_json_and_gzip_ndjson_are_stored(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    async with serve(create_app(settings)) as url:
        as_json = await client.post(
            f"{url}/v1/readings",
            content=gzip.compress(json.dumps([reading(0), reading(1)]).encode()),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        as_ndjson = await client.post(
            f"{url}/v1/readings",
            content=gzip.compress(ndjson([reading(2), reading(3)])),
            headers={**NDJSON, "Content-Encoding": "gzip"},
        )

    assert as_json.status_code == 202, as_json.text
    assert as_ndjson.status_code == 202, as_ndjson.text
    seqs = [r["seq"] for r in as_json.json()["results"] + as_ndjson.json()["results"]]
    assert await stored_values(js, settings, seqs) == [0.0, 1.0, 2.0, 3.0]


async def test_gzip_bomb_is_413_and_stores_nothing(
    make_settings: Callable[..., Settings], serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    settings = make_settings(max_inflated_bytes=100_000)
    # A valid batch padded with whitespace: about 20 KB on the wire, 10 MB once inflated.
    bomb = gzip.compress(json.dumps([reading(0)]).encode() + b" " * 10_000_000)
    assert len(bomb) < settings.max_body_bytes
    async with serve(create_app(settings)) as url:
        response = await client.post(
            f"{url}/v1/readings", content=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "body_too_large"
    assert "inflates to more than 100000 bytes" in error["message"]
    assert (await js.stream_info(settings.stream_name)).state.messages == 0


async def test_bad_gzip_and_other_codings_are_refused(
    settings: Settings, serve: Serve, client: httpx.AsyncClient
) -> None:
    body = json.dumps(reading(0)).encode()
    async with serve(create_app(settings)) as url:
        not_gzip = await client.post(
            f"{url}/v1/readings", content=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )
        brotli = await client.post(
            f"{url}/v1/readings", content=body, headers={"Content-Type": "application/json", "Content-Encoding": "br"}
        )
    assert not_gzip.status_code == 400
    assert not_gzip.json()["error"]["code"] == "malformed_gzip"
    assert brotli.status_code == 415
    assert brotli.json()["error"] == {
        "code": "unsupported_content_encoding",
        "message": "Content-Encoding must be gzip (or none), not 'br'",
        "field": "Content-Encoding",
    }
    assert brotli.headers["Accept-Encoding"] == "gzip"


async def test_ndjson_error_names_the_line_and_stores_nothing(
    settings: Settings, serve: Serve, client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    body = ndjson([reading(0), reading(1, value="hot"), reading(2)])
    async with serve(create_app(settings)) as url:
        invalid = await client.post(f"{url}/v1/readings", content=body, headers=NDJSON)
        malformed = await client.post(f"{url}/v1/readings", content=body + b'{"device": \n', headers=NDJSON)
    assert invalid.status_code == 422
    assert invalid.json()["error"]["details"] == [
        {"index": 1, "field": "value", "message": "Input should be a valid number", "line": 2}
    ]
    assert malformed.status_code == 400
    assert malformed.json()["error"]["message"].startswith("line 4: malformed JSON")
    assert (await js.stream_info(settings.stream_name)).state.messages == 0


async def test_a_ts_beyond_a_floats_range_is_422_naming_the_line_not_500(
    settings: Settings, serve: Serve, client: httpx.AsyncClient
) -> None:
    body = ndjson([reading(0)]) + b'{"device": "d", "metric": "m", "value": 1, "ts": %s}\n' % (b"9" * 400)
    async with serve(create_app(settings)) as url:
        response = await client.post(f"{url}/v1/readings", content=body, headers=NDJSON)
    assert response.status_code == 422, response.text
    [detail] = response.json()["error"]["details"]
    assert (detail["index"], detail["line"], detail["field"]) == (1, 2, "ts")


async def test_an_endless_ndjson_body_is_refused_before_it_ends(
    make_settings: Callable[..., Settings], serve: Serve
) -> None:
    # The answer comes while the client is still sending: NDJSON is parsed as it arrives, not read whole first.
    settings = make_settings(max_batch=50, ingest_burst_per_device=50)
    line = json.dumps(reading(0)).encode() + b"\n"
    async with serve(create_app(settings)) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/readings HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/x-ndjson\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = line * 51
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))  # one line too many, and no final chunk
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5.0)
        writer.close()
        await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 422 ")


async def test_openapi_documents_ndjson_gzip_and_429(
    settings: Settings, serve: Serve, client: httpx.AsyncClient
) -> None:
    async with serve(create_app(settings)) as url:
        schema = (await client.get(f"{url}/openapi.json")).json()
    operation = schema["paths"]["/v1/readings"]["post"]
    assert set(operation["requestBody"]["content"]) == {"application/json", "application/x-ndjson"}
    assert "gzip" in operation["summary"]
    assert {"413", "415", "429", "503"} <= set(operation["responses"])
