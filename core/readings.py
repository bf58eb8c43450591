"""The reading a device sends, the form it is stored in, and the SSE event a dashboard receives.

The wire formats live here and nowhere else: ``stored_payload`` is what ingest publishes to
JetStream, ``event_frame`` turns a stored message into the SSE bytes every subscriber receives.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from core.topics import TOKEN_RE, topic_of


def _check_token(value: str) -> str:
    if not TOKEN_RE.fullmatch(value):
        raise PydanticCustomError(
            "token", "must be 1-64 characters of A-Z a-z 0-9 _ - (it becomes one NATS subject token)"
        )
    return value


Token = Annotated[str, Strict(), AfterValidator(_check_token)]
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]
MAX_TAGS = 16
MAX_TAG_VALUE_CHARS = 256
READING_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"
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
            if not math.isfinite(value) or not 0 <= value < LATEST_TS.timestamp():
                raise ValueError("ts in epoch seconds must be between 0 and year 9999")
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError("ts must be RFC 3339, e.g. 2026-11-27T06:56:09Z") from None
            if parsed.tzinfo is None:
                raise ValueError("ts must carry a UTC offset or Z (RFC 3339)")
            return parsed.astimezone(UTC)
        raise ValueError("ts must be an RFC 3339 string or epoch seconds")

    @property
    def topic(self) -> str:
        """``site.device.metric``: what dashboards subscribe to."""
        return topic_of(self.site, self.device, self.metric)


def format_ts(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stored_payload(reading: Reading, received_at: datetime) -> bytes:
    """The JSON stored in JetStream: the topic first, then the reading, then the server's receive time."""
    body: dict[str, Any] = {"topic": reading.topic}
    body.update(reading.model_dump(exclude_none=True, exclude={"ts"}))
    if reading.ts is not None:
        body["ts"] = format_ts(reading.ts)
    body["received_at"] = format_ts(received_at)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def event_data(seq: int, payload: bytes) -> bytes | None:
    """The ``data:`` of an event: the stored JSON with its stream sequence in front.

    Splices ``"seq"`` into the stored object rather than decoding and encoding it again. Returns None
    for a payload that is not one of ours (not a JSON object, or one that would break an SSE line).
    """
    if not payload.startswith(b'{"') or b"\n" in payload or b"\r" in payload:
        return None
    return b'{"seq":%d,%s' % (seq, payload[1:])


def event_frame(seq: int, payload: bytes) -> bytes | None:
    """The complete SSE frame of a stored reading, encoded once and written to every subscriber."""
    data = event_data(seq, payload)
    if data is None:
        return None
    return b"id: %d\nevent: reading\ndata: %s\n\n" % (seq, data)


def control_frame(event: str, data: dict[str, Any]) -> bytes:
    """An application event without an id (``reset``, ``end``): it must not move the client's resume point."""
    return b"event: %s\ndata: %s\n\n" % (event.encode(), json.dumps(data, separators=(",", ":")).encode())


def retry_frame(retry_ms: int) -> bytes:
    """The reconnect hint sent first on every stream."""
    return b"retry: %d\n\n" % retry_ms


KEEPALIVE_FRAME = b": keep-alive\n\n"
