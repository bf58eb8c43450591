"""A client that sends too much reads the error, not a reset: over real sockets, with clients that send the whole
body before they read (http.client, urllib), and raw ones that stop halfway or never stop."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from support.net import send_until_closed

from core.settings import Settings
from ingest.app import create_app

Serve = Callable[..., AbstractAsyncContextManager[str]]
TWO_MIB = 2 << 20
CLOSED_WITHIN_S = 30.0  # far beyond any bound set here, on a loaded machine
POSTS = 20


def padded_batch(size: int) -> bytes:
    """A JSON batch of ``size`` bytes (one reading and whitespace)."""
    reading = json.dumps([{"device": "d", "metric": "m", "value": 1.5}]).encode()
    return reading[:-1] + b" " * (size - len(reading)) + b"]"


def with_http_client(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST with http.client on a connection it keeps when it can (HTTP/1.1, no ``Connection: close``)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=CLOSED_WITHIN_S)
    try:
        connection.request("POST", "/v1/readings", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def with_urllib(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST with urllib, which sends ``Connection: close``: the server closes right after its answer."""
    request = urllib.request.Request(f"{url}/v1/readings", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=CLOSED_WITHIN_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


@pytest.mark.parametrize("post", [with_http_client, with_urllib], ids=["http.client", "urllib"])
async def test_posts_of_2_mib_each_read_the_413(
    settings: Settings, serve: Serve, post: Callable[[str, bytes, dict[str, str]], tuple[int, dict[str, Any]]]
) -> None:
    body = padded_batch(TWO_MIB)
    async with serve(create_app(settings), ready=False) as url:
        answers = [await asyncio.to_thread(post, url, body, {"Content-Type": "application/json"}) for _ in range(POSTS)]
    assert [(status, error["error"]["code"]) for status, error in answers] == [(413, "body_too_large")] * POSTS


def gzip_garbage(size: int) -> bytes:
    return b"not gzip" * (size // 8)


def ndjson_lines(size: int) -> bytes:
    line = json.dumps({"device": "d", "metric": "m", "value": 1.5}).encode() + b"\n"
    return line * (size // len(line))


@pytest.mark.parametrize(
    ("headers", "make_body", "status", "code"),
    [
        ({"Content-Type": "text/plain"}, padded_batch, 415, "unsupported_media_type"),
        ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, gzip_garbage, 400, "malformed_gzip"),
        ({"Content-Type": "application/x-ndjson"}, ndjson_lines, 422, "batch_too_large"),
        ({"Content-Type": "application/x-ndjson"}, lambda size: b"{oops\n" + b" " * size, 400, "malformed_json"),
    ],
    ids=["415", "gzip", "ndjson-batch", "ndjson-line"],
)
async def test_every_answer_before_the_body_ended_is_read_by_urllib(
    make_settings: Callable[..., Settings],
    serve: Serve,
    headers: dict[str, str],
    make_body: Callable[[int], bytes],
    status: int,
    code: str,
) -> None:
    # Within the size limit, so that the refusal comes from the first bytes; larger than any kernel's socket
    # buffers, so that the client is still sending when the answer is ready.
    size = 16 << 20
    settings = make_settings(max_body_bytes=2 * size, discard_max_bytes=2 * size)
    async with serve(create_app(settings), ready=False) as url:
        answers = [await asyncio.to_thread(with_urllib, url, make_body(size), headers) for _ in range(5)]
    assert [(answered, error["error"]["code"]) for answered, error in answers] == [(status, code)] * 5


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_a_200_mib_body_is_cut_off_without_reading_it_all(
    make_settings: Callable[..., Settings], serve: Serve, framing: str
) -> None:
    # Chunked, the server drains up to discard_max_bytes and closes; with a length beyond that bound it
    # answers and closes at once.
    settings = make_settings(discard_max_bytes=1 << 20)
    total = 200 << 20
    piece = b"x" * (1 << 20)
    start = b"POST /v1/readings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    if framing == "chunked":
        head, piece = start + b"Transfer-Encoding: chunked\r\n\r\n", b"%x\r\n%s\r\n" % (len(piece), piece)
    else:
        head = start + b"Content-Length: %d\r\n\r\n" % total
    async with serve(create_app(settings), ready=False) as url:
        sent = await asyncio.to_thread(send_until_closed, url, head, piece, total)
    assert sent < 64 << 20  # the limits plus what the kernels' socket buffers hold


async def test_a_client_that_stops_sending_reads_the_answer_and_is_closed_after_the_timeout(
    make_settings: Callable[..., Settings], serve: Serve
) -> None:
    settings = make_settings(discard_timeout_s=0.5)
    async with serve(create_app(settings), ready=False) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/readings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (TWO_MIB, b" " * 100_000)
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSED_WITHIN_S)  # the answer comes first
        async with asyncio.timeout(CLOSED_WITHIN_S):
            body = await reader.read()  # until the server closes, the drain having timed out
        writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nconnection: close\r\n" in head
    assert json.loads(body)["error"]["code"] == "body_too_large"


async def test_a_client_waiting_for_100_continue_is_answered_without_being_invited(
    settings: Settings, serve: Serve
) -> None:
    async with serve(create_app(settings), ready=False) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/readings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % TWO_MIB
        )
        async with asyncio.timeout(CLOSED_WITHIN_S):
            received = await reader.read()  # until the server closes, without reading a body never sent
        writer.close()
    assert received.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nconnection: close\r\n" in received


async def test_answers_after_the_whole_body_keep_the_connection(
    settings: Settings, serve: Serve, client: httpx.AsyncClient
) -> None:
    bad_reading = gzip.compress(json.dumps({"device": "d", "metric": "m"}).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with serve(create_app(settings)) as url:
        invalid = await client.post(f"{url}/v1/readings", content=bad_reading, headers=headers)
        probe = await client.get(f"{url}/healthz")
    assert invalid.status_code == 422
    assert "connection" not in invalid.headers
    assert "connection" not in probe.headers
