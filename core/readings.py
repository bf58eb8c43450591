"""The reading a device sends, the form it is stored in, and the SSE event a dashboard receives.

The wire formats live here and nowhere else: ``stored_payload`` is what ingest publishes to
JetStream, ``event_frame`` turns a stored message into the SSE bytes every subscriber receives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from core.topics import TOKEN_RE, topic_of

TOKEN_PATTERN = f"^{TOKEN_RE.pattern}$"
# What a token that does not match its pattern is told (ingest/parse.py words the error so): pydantic's own message
# would print the regular expression. Checked by pydantic-core itself: a Python validator per token cost 0.4 µs,
# 2 µs of a reading with two tags.
TOKEN_MESSAGE = "must be 1-64 characters of A-Z a-z 0-9 _ - (it becomes one NATS subject token)"
Token = Annotated[str, StringConstraints(pattern=TOKEN_PATTERN, strict=True)]
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]
MAX_TAGS = 16
MAX_TAG_VALUE_CHARS = 256
READING_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"
DEDUP_ID_MAX_CHARS = 64 + 1 + 64 + 1 + 128  # site.device.id
EARLIEST_TS = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TS = datetime(9999, 12, 31, tzinfo=UTC)


class Reading(BaseModel):
    """One sensor reading as a device sends it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Token
    metric: Token
    value: FiniteNumber
    site: Token = "default"
    ts: datetime | None = Field(default=None, description="RFC 3339 with offset, or epoch seconds.")
    unit: Annotated[str, StringConstraints(max_length=32, strict=True)] | None = None
    tags: dict[Token, Annotated[str, StringConstraints(max_length=MAX_TAG_VALUE_CHARS, strict=True)]] | None = Field(
        default=None, max_length=MAX_TAGS
    )
    id: Annotated[str, StringConstraints(pattern=READING_ID_PATTERN, strict=True)] | None = Field(
        default=None, description="Client-chosen id; a reading with an id already stored is not stored again."
    )

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, value: Any) -> Any:
        """Accept exactly RFC 3339 (with an offset) or epoch seconds; pydantic alone would guess milliseconds."""
        if value is None:
            return None
        if isinstance(value, bool):
            raise ValueError("ts must be an RFC 3339 string or epoch seconds")
        if isinstance(value, int | float):
            # One comparison refuses NaN and infinities too; math.isfinite(10**400) would raise OverflowError.
            if not 0 <= value < LATEST_TS.timestamp():
                raise ValueError("ts in epoch seconds must be between 0 and year 9999")
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError("ts must be RFC 3339, e.g. 2026-11-27T06:56:09Z") from None
            if parsed.tzinfo is None:
                raise ValueError("ts must carry a UTC offset or Z (RFC 3339)")
            try:
                return parsed.astimezone(UTC)
            except OverflowError:
                raise ValueError("ts is out of range once converted to UTC") from None
        raise ValueError("ts must be an RFC 3339 string or epoch seconds")

    @property
    def topic(self) -> str:
        """``site.device.metric``: what dashboards subscribe to."""
        return topic_of(self.site, self.device, self.metric)

    @property
    def dedup_id(self) -> str | None:
        """``site.device.id``, the ``Nats-Msg-Id`` JetStream de-duplicates on, or None without an id.

        JetStream de-duplicates per stream: with the id alone, a reading of one device was taken for a
        retry of another's that happened to use the same id, and not stored. Site and device are tokens
        (no dot), so the id is unambiguous, and visible ASCII like the id itself.
        """
        return None if self.id is None else f"{self.site}.{self.device}.{self.id}"


def format_ts(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z`` (no ``strftime``: it is a third of the cost)."""
    utc = moment.astimezone(UTC)
    # %-formatting: 1.1 µs where an f-string with seven format specs takes 1.8 (once per reading stored).
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        utc.microsecond,
    )


class ReceiveClock:
    """Now, as ``format_ts`` writes it, with the date and time of day formatted once a second (``format_ts`` of
    ``datetime.now``, once a request, cost more than twice this)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""  # format_ts of the second, without its fraction

    def now(self) -> str:
        """The current time in UTC, to the microsecond."""
        second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = format_ts(datetime.fromtimestamp(second, UTC))[: -len(".000000Z")]
        return "%s.%06dZ" % (self._prefix, nanoseconds // 1000)  # noqa: UP031  # as format_ts


_SERIALIZER = Reading.__pydantic_serializer__
_ALL_BUT_TS = {"ts"}  # ts is written by format_ts: always six digits of fraction, so it sorts as text


def _stored(reading: Reading, received_at: str) -> bytes:
    """The stored JSON: ``topic``, the fields that are not None in model order but ``ts``, then ``ts`` as
    ``format_ts`` writes it, then ``received_at`` (read from the end by stream/latency.py).

    pydantic-core writes the fields in one call (UTF-8, not escaped to ASCII; a float as the shortest text that reads
    back the same, ``1e16`` where ``json.dumps`` writes ``1e+16``): a reading 2.9 µs instead of 3.5 field by field.
    The topic is tokens joined by dots: nothing in it needs escaping.
    """
    fields = _SERIALIZER.to_json(reading, exclude_none=True, exclude=_ALL_BUT_TS)[1:-1]
    topic = reading.topic.encode()
    if reading.ts is None:
        return b'{"topic":"%s",%s,"received_at":"%s"}' % (topic, fields, received_at.encode())
    ts = format_ts(reading.ts).encode()
    return b'{"topic":"%s",%s,"ts":"%s","received_at":"%s"}' % (topic, fields, ts, received_at.encode())


def stored_payload(reading: Reading, received_at: datetime) -> bytes:
    """The JSON stored in JetStream: the topic first, then the reading, then the server's receive time."""
    return _stored(reading, format_ts(received_at))


def stored_payloads(readings: Sequence[Reading], received_at: str) -> list[tuple[str, bytes]]:
    """Each reading's topic and ``stored_payload``, for a batch received at one time, ``received_at`` as
    ``format_ts`` writes it (the ingest's hot path)."""
    return [(reading.topic, _stored(reading, received_at)) for reading in readings]


READING_PREFIX = b"id: "  # what every reading's frame starts with (``event_frame``); control frames do not


def event_frame(seq: int, payload: bytes) -> bytes | None:
    """The complete SSE frame of a stored reading, encoded once and written to every subscriber.

    ``data:`` is the stored JSON with its stream sequence spliced in front (``{"seq":N,...``) rather
    than decoded and encoded again. None for a payload that is not one of ours (not a JSON object,
    or one that would break an SSE line).
    """
    if not payload.startswith(b'{"') or b"\n" in payload or b"\r" in payload:
        return None
    return b'id: %d\nevent: reading\ndata: {"seq":%d,%s\n\n' % (seq, seq, payload[1:])


def control_frame(event: str, data: dict[str, Any]) -> bytes:
    """An application event without an id (``reset``, ``end``): it must not move the client's resume point."""
    return b"event: %s\ndata: %s\n\n" % (event.encode(), json.dumps(data, separators=(",", ":")).encode())


def retry_frame(retry_ms: int) -> bytes:
    """The reconnect hint sent first on every stream."""
    return b"retry: %d\n\n" % retry_ms


KEEPALIVE_FRAME = b": keep-alive\n\n"
