"""Reading and checking a body without a server: how much is read, which media types pass, how errors read."""

from __future__ import annotations

import json

import pytest
from starlette.requests import Request
from starlette.types import Message

from ingest.body import (
    MAX_ERROR_DETAILS,
    BodyTooLarge,
    InvalidReadings,
    UnsupportedMediaType,
    check_content_type,
    parse_readings,
    read_body,
)

CHUNK = b"x" * 64


class EndlessBody:
    """An ASGI ``receive`` that never ends the body, counting the chunks handed out."""

    def __init__(self) -> None:
        self.chunks = 0

    async def __call__(self) -> Message:
        self.chunks += 1
        return {"type": "http.request", "body": CHUNK, "more_body": True}


def request(receive: EndlessBody, headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/v1/readings", "headers": raw}, receive)


async def test_endless_body_is_abandoned_at_the_limit() -> None:
    receive = EndlessBody()
    with pytest.raises(BodyTooLarge):
        await read_body(request(receive), max_body_bytes=1000)
    assert receive.chunks == 1000 // len(CHUNK) + 1  # the first chunk past the limit is the last one read


async def test_declared_length_over_the_limit_reads_nothing() -> None:
    receive = EndlessBody()
    with pytest.raises(BodyTooLarge):
        await read_body(request(receive, {"Content-Length": "1001"}), max_body_bytes=1000)
    assert receive.chunks == 0


@pytest.mark.parametrize(
    "header", ["application/json", "application/json; charset=utf-8", 'APPLICATION/JSON;Charset="UTF8"']
)
def test_json_media_types_pass(header: str) -> None:
    check_content_type(header)


@pytest.mark.parametrize("header", [None, "", "text/json", "application/jsonx", "application/json; charset=utf-16"])
def test_other_media_types_are_refused(header: str | None) -> None:
    with pytest.raises(UnsupportedMediaType) as refused:
        check_content_type(header)
    assert refused.value.field == "Content-Type"


def test_a_single_reading_is_a_list_of_one() -> None:
    [reading] = parse_readings(b'{"device": "d", "metric": "m", "value": 1}', max_batch=1)
    assert (reading.topic, reading.value) == ("default.d.m", 1.0)


def test_whole_item_errors_have_no_field() -> None:
    with pytest.raises(InvalidReadings) as invalid:
        parse_readings(b'[{"device": "d", "metric": "m", "value": 1}, 7]', max_batch=2)
    assert invalid.value.details == [
        {"index": 1, "field": None, "message": "Input should be a valid dictionary or instance of Reading"}
    ]


def test_error_details_are_bounded() -> None:
    bad = {"device": "d", "metric": "m", "value": 1, **{f"extra{n}": n for n in range(MAX_ERROR_DETAILS)}}
    with pytest.raises(InvalidReadings) as invalid:
        parse_readings(json.dumps([bad, bad]).encode(), max_batch=2)
    assert invalid.value.details is not None and len(invalid.value.details) == MAX_ERROR_DETAILS
    assert f"{2 * MAX_ERROR_DETAILS} errors; the first {MAX_ERROR_DETAILS} are listed" in invalid.value.message
    assert "2 of 2 readings are invalid" in invalid.value.message
