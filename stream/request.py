"""What a client asks of ``GET /v1/stream``, read straight from the ASGI scope.

The SSE endpoint is served in front of FastAPI's routing (see stream/app.py), so it reads its query
and headers here, with the same rules and the same errors that FastAPI's parameter checks would give.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from urllib.parse import parse_qsl

from starlette.types import Scope

from core.errors import InvalidParameter
from core.settings import Settings
from core.topics import InvalidPattern, Pattern, quoted
from stream.limits import Limits

MAX_EVENT_ID_DIGITS = 19
EVENT_ID_GRAMMAR = rf"^[0-9]{{1,{MAX_EVENT_ID_DIGITS}}}$"  # what parse_event_id accepts (and surrounding blanks)
# since=: an RFC 3339 time with its offset, or a negative duration back from now (-90s, -15m, -2h, -7d)
SINCE_GRAMMAR = (
    r"^(?:-[0-9]{1,9}(?:\.[0-9]{1,6})?[smhd]"
    r"|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2}))$"
)
SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SNAPSHOT_LATEST = "latest"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_NUMBER_CHARS = 32  # rate and max_events: far beyond any maximum they can lower, and cheap to convert
LIMITS_KEPT = 256  # distinct Limits that connection_limits keeps (most streams ask for nothing: the server's own)
Number = TypeVar("Number", int, float)


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """A valid subscription: patterns, where it starts, limits, and who asks.

    It starts after ``resume_after`` (an event id), or at ``since`` (a time), or live (neither); with
    ``snapshot``, the latest reading of every matching topic comes first (as of ``since`` when given).
    """

    patterns: list[Pattern]
    resume_after: int | None
    limits: Limits
    client: str
    since: datetime | None = None
    snapshot: bool = False

    @classmethod
    def from_scope(cls, scope: Scope, settings: Settings) -> StreamRequest:
        """Parse and check everything; raises InvalidParameter naming the field at fault."""
        query: dict[str, list[str]] = {}
        for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
            query.setdefault(name, []).append(value)
        # All are checked; the header (the browser's own reconnect) wins over what the first connect asked.
        asked = parse_event_id(_single(query, "last_event_id"), "last_event_id")
        since = parse_since(_single(query, "since"), datetime.now(UTC))
        snapshot = parse_snapshot(_single(query, "snapshot"))
        if asked is not None and (since is not None or snapshot):
            raise InvalidParameter(
                "last_event_id resumes exactly after an event; it cannot be combined with since or snapshot",
                field="last_event_id",
            )
        header = next((value for name, value in scope["headers"] if name == b"last-event-id"), None)
        if header is not None:
            asked, since, snapshot = parse_event_id(header.decode("latin-1"), "Last-Event-ID"), None, False
        rate = _positive(query, "rate", float)
        max_events = _positive(query, "max_events", int)
        client = scope.get("client")
        return cls(
            patterns=parse_patterns(query.get("topic", []), settings.max_patterns),
            resume_after=asked,
            limits=connection_limits(settings, rate, max_events),
            client=client[0] if client else "unknown",
            since=since,
            snapshot=snapshot,
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


def parse_since(value: str | None, now: datetime) -> datetime | None:
    """``since=``: an RFC 3339 time with its offset, or a negative duration back from ``now``."""
    if value is None:
        return None
    problem = f"since must be an RFC 3339 time with its offset or a negative duration (-15m), not {quoted(value)}"
    if not re.fullmatch(SINCE_GRAMMAR, value):
        raise InvalidParameter(problem, field="since")
    if value.startswith("-"):  # further back than 1970 is the same as 1970: before any reading
        back_s = float(value[1:-1]) * SINCE_UNITS[value[-1]]
        return now - timedelta(seconds=back_s) if back_s < now.timestamp() else EPOCH
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidParameter(problem, field="since") from None


def parse_snapshot(value: str | None) -> bool:
    """``snapshot=latest`` (the only kind there is) or nothing."""
    if value is None:
        return False
    if value != SNAPSHOT_LATEST:
        raise InvalidParameter(f"snapshot must be {SNAPSHOT_LATEST!r}, not {quoted(value)}", field="snapshot")
    return True


def connection_limits(settings: Settings, rate: float | None, max_events: int | None) -> Limits:
    """The server's maxima, lowered (never raised) by what the client asked for."""
    events = settings.max_events
    if max_events is not None:
        events = max_events if events == 0 else min(events, max_events)
    return _limits_kept(
        min(settings.max_rate_per_s, rate) if rate is not None else settings.max_rate_per_s,
        events,
        settings.max_buffer_bytes,
        settings.sse_send_buffer_bytes,
    )


@functools.lru_cache(maxsize=LIMITS_KEPT)
def _limits_kept(rate_per_s: float, max_events: int, max_buffer_bytes: int, send_buffer_bytes: int) -> Limits:
    """Equal limits as one object (it is immutable): the streams that ask for the same hold one between them."""
    return Limits(
        rate_per_s=rate_per_s,
        max_events=max_events,
        max_buffer_bytes=max_buffer_bytes,
        send_buffer_bytes=send_buffer_bytes,
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
