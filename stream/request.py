"""What a client asks of ``GET /v1/stream``, read straight from the ASGI scope.

The SSE endpoint is served in front of FastAPI's routing (see stream/app.py), so it reads its query
and headers here, with the same rules and the same errors that FastAPI's parameter checks would give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qsl

from starlette.types import Scope

from core.errors import InvalidParameter
from core.settings import Settings
from core.topics import InvalidPattern, Pattern, quoted
from stream.limits import Limits

MAX_EVENT_ID_DIGITS = 19
EVENT_ID_GRAMMAR = rf"^[0-9]{{1,{MAX_EVENT_ID_DIGITS}}}$"  # what parse_event_id accepts (and surrounding blanks)
MAX_NUMBER_CHARS = 32  # rate and max_events: far beyond any maximum they can lower, and cheap to convert
Number = TypeVar("Number", int, float)


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """A valid subscription: patterns, where to resume (None: live only), limits, and who asks."""

    patterns: list[Pattern]
    resume_after: int | None
    limits: Limits
    client: str

    @classmethod
    def from_scope(cls, scope: Scope, settings: Settings) -> StreamRequest:
        """Parse and check everything; raises InvalidParameter naming the field at fault."""
        query: dict[str, list[str]] = {}
        for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
            query.setdefault(name, []).append(value)
        # Both are checked; the header (the browser's own reconnect) wins over the first connect's parameter.
        asked = parse_event_id(_single(query, "last_event_id"), "last_event_id")
        header = next((value for name, value in scope["headers"] if name == b"last-event-id"), None)
        resume_after = asked if header is None else parse_event_id(header.decode("latin-1"), "Last-Event-ID")
        rate = _positive(query, "rate", float)
        max_events = _positive(query, "max_events", int)
        client = scope.get("client")
        return cls(
            patterns=parse_patterns(query.get("topic", []), settings.max_patterns),
            resume_after=resume_after,
            limits=connection_limits(settings, rate, max_events),
            client=client[0] if client else "unknown",
        )


def parse_patterns(values: list[str], limit: int) -> list[Pattern]:
    """The ``topic`` parameters as patterns; 400 naming the parameter on the first bad one."""
    if not values:
        raise InvalidParameter("topic: at least one topic pattern is required", field="topic")
    if len(values) > limit:
        raise InvalidParameter(f"at most {limit} topic patterns per connection", field="topic")
    try:
        return list(dict.fromkeys(Pattern.parse(value) for value in values))
    except InvalidPattern as err:
        raise InvalidParameter(str(err), field="topic") from None


def parse_event_id(value: str | None, field: str) -> int | None:
    """A ``Last-Event-ID``: our ids are stream sequences, so anything but a non-negative integer is a 400."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > MAX_EVENT_ID_DIGITS:
        raise InvalidParameter(
            f"{field} must be a non-negative integer (an event id this service sent), not {quoted(value)}", field=field
        )
    return int(text)


def connection_limits(settings: Settings, rate: float | None, max_events: int | None) -> Limits:
    """The server's maxima, lowered (never raised) by what the client asked for."""
    events = settings.max_events
    if max_events is not None:
        events = max_events if events == 0 else min(events, max_events)
    return Limits(
        rate_per_s=min(settings.max_rate_per_s, rate) if rate is not None else settings.max_rate_per_s,
        max_events=events,
        max_buffer_bytes=settings.max_buffer_bytes,
        send_buffer_bytes=settings.sse_send_buffer_bytes,
    )


def _single(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _positive(query: dict[str, list[str]], name: str, kind: type[Number]) -> Number | None:
    """A finite positive number, in at most MAX_NUMBER_CHARS characters (an int of 400 digits overflows a float)."""
    text = _single(query, name)
    if text is None:
        return None
    try:
        value = kind(text) if len(text) <= MAX_NUMBER_CHARS else None
    except ValueError:
        value = None
    if value is None or not value > 0 or not math.isfinite(value):
        raise InvalidParameter(
            f"{name} must be a positive number of at most {MAX_NUMBER_CHARS} characters, not {quoted(text)}",
            field=name,
        )
    return value
