"""From an HTTP request to validated readings, or an error that names what was wrong.

The whole request is checked before anything is published: media type, size (read incrementally,
never more than the limit), UTF-8, JSON syntax, shape, batch length, then every reading at once.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from pydantic import TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect

from core.errors import ApiError, location
from core.readings import Reading
from core.settings import Settings

JSON_MEDIA_TYPE = "application/json"
UTF8_CHARSETS = frozenset({"utf-8", "utf8"})
MAX_ERROR_DETAILS = 100
MAX_ECHOED_CHARS = 100

READINGS: TypeAdapter[list[Reading]] = TypeAdapter(list[Reading])


class MalformedJson(ApiError):
    """The body is not UTF-8 JSON; the message says where the parser stopped."""

    code = "malformed_json"


class IncompleteBody(ApiError):
    """The client went away before sending the whole body (nobody reads this answer; it keeps the metrics honest)."""

    code = "incomplete_body"


class BodyTooLarge(ApiError):
    """The body is larger than ``max_body_bytes``."""

    status = 413
    code = "body_too_large"


class UnsupportedMediaType(ApiError):
    """The body is not declared as ``application/json``."""

    status = 415
    code = "unsupported_media_type"


class InvalidReadings(ApiError):
    """At least one reading is invalid (or the body is no reading at all); nothing was published."""

    status = 422
    code = "invalid_readings"


class BatchTooLarge(ApiError):
    """More readings in one request than ``max_batch``.

    422 rather than 413: the body was within the byte limit and parsed fine; it is its content that is refused.
    """

    status = 422
    code = "batch_too_large"


def check_content_type(header: str | None) -> None:
    """Accept ``application/json``, with a charset parameter only if it says UTF-8 (the one encoding of JSON)."""
    if header is None:
        raise UnsupportedMediaType(f"Content-Type must be {JSON_MEDIA_TYPE}; none was sent", field="Content-Type")
    media_type, _, parameters = header.partition(";")
    if media_type.strip().lower() != JSON_MEDIA_TYPE:
        raise UnsupportedMediaType(
            f"Content-Type must be {JSON_MEDIA_TYPE}, not {header[:MAX_ECHOED_CHARS]!r}", field="Content-Type"
        )
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in UTF8_CHARSETS:
            raise UnsupportedMediaType(
                f"JSON is UTF-8; charset {value.strip()[:MAX_ECHOED_CHARS]!r} is not accepted", field="Content-Type"
            )


async def read_readings(request: Request, settings: Settings) -> list[Reading]:
    """Every check on a request, in order of cost, before anything is published."""
    check_content_type(request.headers.get("content-type"))
    body = await read_body(request, settings.max_body_bytes)
    return parse_readings(body, settings.max_batch)


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The body, read chunk by chunk and abandoned as soon as it passes ``max_body_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_large = int(declared) > max_body_bytes
        except ValueError:
            too_large = False  # the HTTP server has already refused a malformed length; the stream decides
        if too_large:
            raise _too_large(max_body_bytes)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise _too_large(max_body_bytes)
            chunks.append(chunk)
    except ClientDisconnect:
        raise IncompleteBody("the client disconnected before the body was complete") from None
    return b"".join(chunks)


def _too_large(max_body_bytes: int) -> BodyTooLarge:
    return BodyTooLarge(f"the body is larger than {max_body_bytes} bytes; send fewer readings per request")


def parse_readings(body: bytes, max_batch: int) -> list[Reading]:
    """Validated readings from one object or a non-empty array of at most ``max_batch`` objects."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MalformedJson(f"the body is not UTF-8: invalid byte at position {err.start}") from None
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError as err:
        raise MalformedJson(
            f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno} (char {err.pos})"
        ) from None
    except ValueError as err:  # valid syntax the parser still refuses, e.g. an integer of more than 4300 digits
        raise MalformedJson(f"unreadable JSON: {str(err).partition(';')[0]}") from None
    except RecursionError:
        raise MalformedJson("JSON nested too deeply to parse (a reading nests at most three levels)") from None

    if isinstance(document, dict):
        return _validate([document], single=True)
    if not isinstance(document, list):
        raise InvalidReadings(
            f"the body must be a reading (a JSON object) or a batch (a JSON array), not {_json_kind(document)}"
        )
    if not document:
        raise InvalidReadings("the batch is empty; send at least one reading")
    if len(document) > max_batch:
        raise BatchTooLarge(f"a batch holds at most {max_batch} readings; this one has {len(document)}")
    return _validate(document, single=False)


def _validate(items: list[Any], *, single: bool) -> list[Reading]:
    try:
        return READINGS.validate_python(items)
    except ValidationError as err:
        raise _invalid(err, count=len(items), single=single) from None


def _invalid(err: ValidationError, *, count: int, single: bool) -> InvalidReadings:
    """One detail per error, ``index`` (None for a single object) and ``field`` (None for the whole item)."""
    errors = err.errors(include_url=False, include_input=False, include_context=False)
    details: list[dict[str, Any]] = []
    for error in errors[:MAX_ERROR_DETAILS]:
        index, *field = error["loc"]
        details.append(
            {
                "index": None if single else index,
                "field": location(tuple(field)) if field else None,
                "message": error["msg"],
            }
        )
    first = details[0]
    if single:
        where = "the reading is invalid"
    else:
        bad_items = len({error["loc"][0] for error in errors})
        where = f"{bad_items} of {count} readings are invalid (first at index {first['index']})"
    message = f"{where}, nothing was stored: {first['field'] or 'the reading'}: {first['message']}"
    if len(errors) > MAX_ERROR_DETAILS:
        message += f" ({len(errors)} errors; the first {MAX_ERROR_DETAILS} are listed)"
    return InvalidReadings(message, field=first["field"], details=details)


def _json_kind(document: Any) -> str:
    if document is None:
        return "null"
    if isinstance(document, bool):
        return "a boolean"
    if isinstance(document, str):
        return "a string"
    return "a number"
