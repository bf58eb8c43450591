"""From an HTTP request to the bytes of its body: media type, content coding, and both size limits.

Nothing here holds more than the limits allow: the body is read chunk by chunk and abandoned as soon as
it passes ``max_body_bytes`` on the wire, and a gzip body is inflated a step at a time and abandoned as
soon as it passes ``max_inflated_bytes`` (a few KB of gzip can inflate to gigabytes).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncGenerator, Iterator
from enum import StrEnum

from fastapi import Request
from starlette.requests import ClientDisconnect

from core.errors import ApiError
from core.settings import Settings

UTF8_CHARSETS = frozenset({"utf-8", "utf8"})
GZIP_CODINGS = frozenset({"gzip", "x-gzip"})
IDENTITY = "identity"
GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer, not raw deflate or zlib
INFLATE_STEP_BYTES = 64 * 1024  # the most one decompress call may produce
MAX_ECHOED_CHARS = 100


class BodyFormat(StrEnum):
    """The accepted media types; the values are the ``Content-Type`` words."""

    JSON = "application/json"
    NDJSON = "application/x-ndjson"


ACCEPTED = " or ".join(BodyFormat)


class IncompleteBody(ApiError):
    """The client went away before sending the whole body (nobody reads this answer; it keeps the metrics honest)."""

    code = "incomplete_body"


class MalformedGzip(ApiError):
    """``Content-Encoding: gzip`` on a body that is not (complete) gzip."""

    code = "malformed_gzip"


class BodyTooLarge(ApiError):
    """The body is larger than ``max_body_bytes``, or larger than ``max_inflated_bytes`` once inflated."""

    status = 413
    code = "body_too_large"


class UnsupportedMediaType(ApiError):
    """The body is declared as neither JSON nor NDJSON."""

    status = 415
    code = "unsupported_media_type"


class UnsupportedEncoding(ApiError):
    """A ``Content-Encoding`` other than gzip; the answer's ``Accept-Encoding`` says what is (RFC 9110, 12.5.3)."""

    status = 415
    code = "unsupported_content_encoding"

    def __init__(self, message: str) -> None:
        super().__init__(message, field="Content-Encoding", headers={"Accept-Encoding": "gzip"})


def check_content_type(header: str | None) -> BodyFormat:
    """JSON or NDJSON, with a charset parameter only if it says UTF-8 (the one encoding of JSON)."""
    if header is None:
        raise UnsupportedMediaType(f"Content-Type must be {ACCEPTED}; none was sent", field="Content-Type")
    media_type, _, parameters = header.partition(";")
    try:
        body_format = BodyFormat(media_type.strip().lower())
    except ValueError:
        raise UnsupportedMediaType(
            f"Content-Type must be {ACCEPTED}, not {header[:MAX_ECHOED_CHARS]!r}", field="Content-Type"
        ) from None
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in UTF8_CHARSETS:
            raise UnsupportedMediaType(
                f"JSON is UTF-8; charset {value.strip()[:MAX_ECHOED_CHARS]!r} is not accepted", field="Content-Type"
            )
    return body_format


def is_gzip(header: str | None) -> bool:
    """Whether the body is gzip; only gzip (or none, or identity) is accepted, and only one coding."""
    coding = (header or IDENTITY).strip().lower()
    if coding in GZIP_CODINGS:
        return True
    if coding in (IDENTITY, ""):
        return False
    raise UnsupportedEncoding(f"Content-Encoding must be gzip (or none), not {coding[:MAX_ECHOED_CHARS]!r}")


class Inflater:
    """Inflates a gzip body a step at a time, refusing it as soon as it passes ``max_inflated_bytes``."""

    def __init__(self, max_inflated_bytes: int) -> None:
        self._limit = max_inflated_bytes
        self._inflated = 0
        self._zlib = zlib.decompressobj(GZIP_WBITS)

    def inflate(self, data: bytes) -> Iterator[bytes]:
        """The inflated bytes of the next piece of the body, in steps of at most INFLATE_STEP_BYTES."""
        while data:
            try:
                out = self._zlib.decompress(data, INFLATE_STEP_BYTES)
            except zlib.error as err:
                raise MalformedGzip(f"the body is not valid gzip ({err})", field="Content-Encoding") from None
            self._inflated += len(out)
            if self._inflated > self._limit:
                raise BodyTooLarge(
                    f"the body inflates to more than {self._limit} bytes; send fewer readings per request"
                )
            if out:
                yield out
            if self._zlib.eof:
                data = self._zlib.unused_data
                if data:  # a gzip file may hold several members, one after the other (RFC 1952, 2.2)
                    self._zlib = zlib.decompressobj(GZIP_WBITS)
            else:
                data = self._zlib.unconsumed_tail

    def finish(self) -> None:
        """Refuse a body that ended inside a gzip member."""
        if not self._zlib.eof:
            raise MalformedGzip("the gzip body is truncated", field="Content-Encoding")


async def body_chunks(request: Request, settings: Settings) -> AsyncGenerator[bytes]:
    """The body as it arrives, inflated if it is gzip, within both size limits."""
    inflater = Inflater(settings.max_inflated_bytes) if is_gzip(request.headers.get("content-encoding")) else None
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_large = int(declared) > limit
        except ValueError:
            too_large = False  # the HTTP server has already refused a malformed length; the stream decides
        if too_large:
            raise _too_large(limit)
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            if inflater is None:
                if chunk:
                    yield chunk
            else:
                for inflated in inflater.inflate(chunk):
                    yield inflated
    except ClientDisconnect:
        raise IncompleteBody("the client disconnected before the body was complete") from None
    if inflater is not None:
        inflater.finish()


async def read_body(request: Request, settings: Settings) -> bytes:
    """The whole body (a JSON document has to be whole to be parsed), within both size limits."""
    return b"".join([chunk async for chunk in body_chunks(request, settings)])


def _too_large(max_body_bytes: int) -> BodyTooLarge:
    return BodyTooLarge(f"the body is larger than {max_body_bytes} bytes; send fewer readings per request")
