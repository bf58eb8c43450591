"""Reading a body without a server: how much is read and inflated, which media types and codings pass."""

from __future__ import annotations

import gzip
import zlib

import pytest
from starlette.types import Message

from core.settings import Settings
from ingest.body import (
    INFLATE_STEP_BYTES,
    Body,
    BodyFormat,
    BodyHeaders,
    BodyTooLarge,
    Inflater,
    MalformedGzip,
    UnsupportedEncoding,
    UnsupportedMediaType,
    check_content_type,
    is_gzip,
)

CHUNK = b"x" * 64


class EndlessBody:
    """An ASGI ``receive`` that never ends the body, counting the chunks handed out."""

    def __init__(self, chunk: bytes = CHUNK) -> None:
        self.chunk = chunk
        self.chunks = 0

    async def __call__(self) -> Message:
        self.chunks += 1
        return {"type": "http.request", "body": self.chunk, "more_body": True}


def headers_of(headers: dict[str, str] | None = None) -> BodyHeaders:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return BodyHeaders.of({"type": "http", "method": "POST", "path": "/v1/readings", "headers": raw})


def limits(max_body_bytes: int = 1000, max_inflated_bytes: int = 10_000) -> Settings:
    return Settings(max_body_bytes=max_body_bytes, max_inflated_bytes=max_inflated_bytes)


async def test_endless_body_is_abandoned_at_the_limit() -> None:
    receive = EndlessBody()
    with pytest.raises(BodyTooLarge):
        await Body(receive, headers_of(), limits(max_body_bytes=1000)).read()
    assert receive.chunks == 1000 // len(CHUNK) + 1  # the first chunk past the limit is the last one read


async def test_declared_length_over_the_limit_reads_nothing() -> None:
    receive = EndlessBody()
    with pytest.raises(BodyTooLarge):
        await Body(receive, headers_of({"Content-Length": "1001"}), limits(max_body_bytes=1000)).read()
    assert receive.chunks == 0


async def test_endless_gzip_body_is_abandoned_at_the_inflated_limit() -> None:
    # One 64-byte chunk of a gzip stream of zeros inflates to far more than 64 bytes: the wire limit alone
    # would let a bomb through; the inflated limit stops it long before the wire limit is reached.
    zeros = zlib.compressobj(wbits=31)
    head = zeros.compress(b"\0" * 10_000_000) + zeros.flush(zlib.Z_SYNC_FLUSH)
    receive = EndlessBody(head)
    with pytest.raises(BodyTooLarge, match="inflates to more than 10000 bytes"):
        await Body(
            receive,
            headers_of({"Content-Encoding": "gzip"}),
            limits(max_body_bytes=100 * len(head), max_inflated_bytes=10_000),
        ).read()
    assert receive.chunks == 1


def test_a_decompression_bomb_is_inflated_no_further_than_the_limit() -> None:
    bomb = gzip.compress(b"\0" * 200_000_000)  # about 200 KB of gzip
    inflater = Inflater(max_inflated_bytes=1_000_000)
    inflated = 0
    with pytest.raises(BodyTooLarge):
        for piece in inflater.inflate(bomb):
            assert len(piece) <= INFLATE_STEP_BYTES
            inflated += len(piece)
    assert inflated <= 1_000_000


def test_gzip_members_one_after_the_other_are_one_body() -> None:
    inflater = Inflater(max_inflated_bytes=1000)
    body = gzip.compress(b'[{"a": 1},') + gzip.compress(b'{"b": 2}]')
    pieces = [piece for split in (body[:7], body[7:30], body[30:]) for piece in inflater.inflate(split)]
    inflater.finish()
    assert b"".join(pieces) == b'[{"a": 1},{"b": 2}]'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"plain text, not gzip", "not valid gzip"),
        (gzip.compress(b"[1, 2, 3]")[:-5], "truncated"),
        (b"", "truncated"),
        (gzip.compress(b"[1]") + b"trailing junk", "not valid gzip"),
    ],
)
def test_what_is_not_gzip_is_refused(body: bytes, message: str) -> None:
    inflater = Inflater(max_inflated_bytes=1000)
    with pytest.raises(MalformedGzip, match=message) as refused:
        for _ in inflater.inflate(body):
            pass
        inflater.finish()
    assert refused.value.status == 400
    assert refused.value.field == "Content-Encoding"


@pytest.mark.parametrize(("header", "gzipped"), [(None, False), ("identity", False), ("gzip", True), (" GZip", True)])
def test_gzip_or_no_coding_is_accepted(header: str | None, gzipped: bool) -> None:
    assert is_gzip(header) is gzipped


@pytest.mark.parametrize("header", ["br", "deflate", "gzip, gzip", "zstd"])
def test_other_codings_are_415_naming_gzip(header: str) -> None:
    with pytest.raises(UnsupportedEncoding) as refused:
        is_gzip(header)
    assert refused.value.status == 415
    assert refused.value.field == "Content-Encoding"
    assert refused.value.headers == {"Accept-Encoding": "gzip"}


@pytest.mark.parametrize(
    ("header", "body_format"),
    [
        ("application/json", BodyFormat.JSON),
        ("application/json; charset=utf-8", BodyFormat.JSON),
        ('APPLICATION/JSON;Charset="UTF8"', BodyFormat.JSON),
        ("application/x-ndjson", BodyFormat.NDJSON),
        ("application/x-ndjson; charset=utf-8", BodyFormat.NDJSON),
    ],
)
def test_json_and_ndjson_media_types_pass(header: str, body_format: BodyFormat) -> None:
    assert check_content_type(header) is body_format


@pytest.mark.parametrize(
    "header", [None, "", "text/json", "application/jsonx", "application/json; charset=utf-16", "application/jsonl"]
)
def test_other_media_types_are_refused(header: str | None) -> None:
    with pytest.raises(UnsupportedMediaType) as refused:
        check_content_type(header)
    assert refused.value.field == "Content-Type"
