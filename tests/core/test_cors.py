"""CORS over real HTTP on both services: the allowed origins' pages get answers they may read (with credentials),
preflights are answered, other origins get nothing (a cross-origin stream: tests/stream/test_cross_origin.py)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.types import Message
from support.sse import Serve

from core.cors import AddedHeaders
from core.settings import Settings
from ingest.app import create_app as create_ingest
from stream.app import create_app as create_stream

PAGE = "https://dashboard.example"
OTHER = "https://evil.example"
READING = {"site": "plant1", "device": "boiler-7", "metric": "temperature", "value": 71.5}


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("access-control-")}


@pytest.mark.parametrize(
    ("create_app", "method", "path"),
    [(create_ingest, "POST", "/v1/readings"), (create_stream, "GET", "/v1/stream")],
    ids=["ingest", "stream"],
)
async def test_a_preflight_from_an_allowed_origin_is_answered_and_others_get_nothing(
    make_settings: Callable[..., Settings], serve: Serve, create_app: Callable[[Settings], Any], method: str, path: str
) -> None:
    settings = make_settings(cors_origins=[PAGE])
    async with serve(create_app(settings)) as url, httpx.AsyncClient() as client:
        asked = {"Access-Control-Request-Method": method, "Access-Control-Request-Headers": "authorization"}
        allowed = await client.options(f"{url}{path}", headers={"Origin": PAGE, **asked})
        refused = await client.options(f"{url}{path}", headers={"Origin": OTHER, **asked})
    assert allowed.status_code == 204
    assert cors_headers(allowed) == {
        "access-control-allow-origin": PAGE,
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "X-Request-ID, Retry-After",
        "access-control-allow-methods": "GET, POST, DELETE",
        "access-control-allow-headers": (
            "Authorization, Content-Type, Content-Encoding, Last-Event-ID, X-API-Key, X-Request-ID"
        ),
        "access-control-max-age": "600",
    }
    assert cors_headers(refused) == {}


async def test_a_page_of_an_allowed_origin_may_read_the_answer_to_its_post(
    make_settings: Callable[..., Settings], serve: Serve
) -> None:
    settings = make_settings(cors_origins=[PAGE, "http://localhost:3000"])
    async with serve(create_ingest(settings)) as url, httpx.AsyncClient() as client:
        posted = await client.post(f"{url}/v1/readings", json=READING, headers={"Origin": PAGE})
        refused = await client.post(f"{url}/v1/readings", json=[], headers={"Origin": PAGE})
        other = await client.post(f"{url}/v1/readings", json=READING, headers={"Origin": OTHER})
    assert posted.status_code == 202
    for answer in (posted, refused):  # errors too: the page reads why it was refused
        assert cors_headers(answer) == {
            "access-control-allow-origin": PAGE,
            "access-control-allow-credentials": "true",
            "access-control-expose-headers": "X-Request-ID, Retry-After",  # what a page may read besides the body
        }
        assert answer.headers["vary"] == "Origin"
    assert other.status_code == 202 and cors_headers(other) == {}


async def test_without_origins_there_are_no_cors_headers(settings: Settings, serve: Serve) -> None:
    async with serve(create_ingest(settings)) as url, httpx.AsyncClient() as client:
        posted = await client.post(f"{url}/v1/readings", json=READING, headers={"Origin": PAGE})
        preflight = await client.options(
            f"{url}/v1/readings", headers={"Origin": PAGE, "Access-Control-Request-Method": "POST"}
        )
    assert posted.status_code == 202 and cors_headers(posted) == {}
    assert preflight.status_code == 405 and cors_headers(preflight) == {}


def test_an_origin_is_exact() -> None:
    for bad in ("*", "https://dashboard.example/", "dashboard.example", "https://*.example"):
        with pytest.raises(ValueError, match="is not an origin"):
            Settings(cors_origins=[bad])
    assert Settings(cors_origins=f"{PAGE}, http://localhost:3000").cors_origins == [PAGE, "http://localhost:3000"]


async def test_the_added_headers_go_out_with_the_start_and_are_not_kept_after_it() -> None:
    """A stream holds its ``send`` for as long as it is open: what it added is not held with it."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"x-request-id", b"dash-1"), (b"access-control-allow-origin", PAGE.encode())]
    added = AddedHeaders(send, headers)
    await added({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await added({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})
    assert sent[0]["headers"] == [(b"content-type", b"text/event-stream"), *headers]
    assert sent[1] == {"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True}
    assert not any(held is headers or held in headers for held in gc.get_referents(added))
