"""The reading model and its wire formats."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core.readings import (
    Reading,
    ReceiveClock,
    control_frame,
    event_frame,
    format_ts,
    stored_payload,
    stored_payloads,
)

RECEIVED = datetime(2026, 11, 27, 7, 0, 0, tzinfo=UTC)


def test_stored_payload_carries_topic_reading_and_receive_time() -> None:
    reading = Reading(device="d1", metric="temp", value=21, site="plant1", unit="C", tags={"room": "3"}, id="d1-1")
    stored = json.loads(stored_payload(reading, RECEIVED))
    assert stored == {
        "topic": "plant1.d1.temp",
        "device": "d1",
        "metric": "temp",
        "value": 21.0,
        "site": "plant1",
        "unit": "C",
        "tags": {"room": "3"},
        "id": "d1-1",
        "received_at": "2026-11-27T07:00:00.000000Z",
    }


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-11-27T08:00:00+01:00", "2026-11-27T07:00:00.000000Z"),
        ("2026-11-27T07:00:00Z", "2026-11-27T07:00:00.000000Z"),
        (1795762800, "2026-11-27T07:00:00.000000Z"),
        (1795762800.5, "2026-11-27T07:00:00.500000Z"),
    ],
)
def test_ts_is_rfc3339_or_epoch_seconds(ts: Any, expected: str) -> None:
    reading = Reading(device="d", metric="m", value=1, ts=ts)
    assert json.loads(stored_payload(reading, RECEIVED))["ts"] == expected


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"device": "a.b"}, "device"),
        ({"device": "*"}, "device"),
        ({"metric": ">"}, "metric"),
        ({"site": ""}, "site"),
        ({"value": "1.5"}, "value"),
        ({"value": True}, "value"),
        ({"value": float("inf")}, "value"),
        ({"ts": "2026-11-27T07:00:00"}, "ts"),
        ({"ts": "yesterday"}, "ts"),
        ({"ts": -1}, "ts"),
        ({"tags": {"a.b": "x"}}, "tags"),
        ({"tags": {f"k{i}": "v" for i in range(17)}}, "tags"),
        ({"id": "has space"}, "id"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_fields_are_named(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Reading(**{"device": "d", "metric": "m", "value": 1.0, **fields})
    assert raised.value.errors()[0]["loc"][0] == field


def test_event_frame_is_the_stored_json_with_its_sequence() -> None:
    payload = stored_payload(Reading(device="d", metric="m", value=1.5), RECEIVED)
    frame = event_frame(42, payload)
    assert frame is not None
    lines = frame.decode().split("\n")
    assert lines[:2] == ["id: 42", "event: reading"]
    assert lines[3:] == ["", ""]
    data = json.loads(lines[2].removeprefix("data: "))
    assert data["seq"] == 42
    assert data == {"seq": 42, **json.loads(payload)}


@pytest.mark.parametrize("payload", [b"", b"[1]", b"{}", b'{"a":"x\ny"}', b"not json"])
def test_foreign_payloads_make_no_event(payload: bytes) -> None:
    assert event_frame(1, payload) is None


def test_control_frames_have_no_id() -> None:
    assert control_frame("end", {"reason": "max_events"}) == b'event: end\ndata: {"reason":"max_events"}\n\n'


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("0999-12-31T23:59:59.999999Z", "0999-12-31T23:59:59.999999Z"),  # RFC 3339 years have four digits
        ("1000-01-01T00:30:00+01:00", "0999-12-31T23:30:00.000000Z"),
        ("9999-12-31T23:59:59.999999-00:00", "9999-12-31T23:59:59.999999Z"),
    ],
)
def test_timestamps_stay_rfc3339_at_the_edges(ts: str, expected: str) -> None:
    reading = Reading(device="d", metric="m", value=1, ts=ts)
    assert json.loads(stored_payload(reading, RECEIVED))["ts"] == expected


def test_a_ts_that_overflows_in_utc_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="out of range"):
        Reading(device="d", metric="m", value=1, ts="0001-01-01T00:00:00+01:00")


def test_a_batch_is_encoded_like_single_readings_with_one_receive_time() -> None:
    readings = [
        Reading(device="d", metric="m", value=0.1, tags={"k": '"quoted" \\ \u2028 \U0001f600 \x00'}),
        Reading(device="boiler-7", metric="t", value=71.5, site="plant1", unit="C", id="b-1", ts=0),
    ]
    encoded = stored_payloads(readings, format_ts(RECEIVED))
    assert encoded == [(r.topic, stored_payload(r, RECEIVED)) for r in readings]
    assert json.loads(encoded[0][1])["tags"] == {"k": '"quoted" \\ \u2028 \U0001f600 \x00'}


def test_the_receive_clock_writes_the_time_as_format_ts_does() -> None:
    clock = ReceiveClock()
    before = datetime.now(UTC)
    first, second = clock.now(), clock.now()  # the second from the second formatted by the first
    after = datetime.now(UTC)
    for written in (first, second):
        moment = datetime.fromisoformat(written)
        assert before <= moment <= after
        assert written == format_ts(moment)
    assert first <= second


TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)  # any text JSON can carry, escapes included
TOKENS = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


@settings(max_examples=300, deadline=None, database=None)
@given(
    device=TOKENS,
    value=st.floats(allow_nan=False, allow_infinity=False),
    site=TOKENS,
    unit=st.none() | TEXT.map(lambda text: text[:32]),
    tags=st.none() | st.dictionaries(TOKENS, TEXT, max_size=16),
    reading_id=st.none() | st.from_regex(r"[\x21-\x7e]{1,128}", fullmatch=True),
    ts=st.none() | st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)),
)
def test_the_stored_json_holds_every_field_in_order_with_ts_and_received_at_last(
    device: str,
    value: float,
    site: str,
    unit: str | None,
    tags: dict[str, str] | None,
    reading_id: str | None,
    ts: datetime | None,
) -> None:
    sent = {"device": device, "metric": "m", "value": value, "site": site, "unit": unit, "tags": tags, "id": reading_id}
    reading = Reading(**sent, ts=None if ts is None else ts.isoformat())
    fields = {name: getattr(reading, name) for name in Reading.model_fields if name != "ts"}  # every field but ts
    expected = {"topic": reading.topic, **{name: value for name, value in fields.items() if value is not None}}
    if ts is not None:
        expected["ts"] = ts.isoformat(timespec="microseconds").replace("+00:00", "Z")
    expected["received_at"] = "2026-11-27T07:00:00.000000Z"
    stored = stored_payload(reading, RECEIVED)
    assert list(json.loads(stored).items()) == list(expected.items())  # the same fields and values, in this order
    assert stored.endswith(b',"received_at":"2026-11-27T07:00:00.000000Z"}')  # compact, where the stream reads it
    assert b"\n" not in stored and b"\r" not in stored  # one SSE data line
