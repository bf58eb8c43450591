"""From body bytes to readings without a server: JSON and NDJSON give the same readings and the same errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ApiError
from core.readings import Reading
from ingest.parse import (
    MAX_ERROR_DETAILS,
    BatchTooLarge,
    InvalidReadings,
    MalformedJson,
    NdjsonLines,
    parse_readings,
)


def reading(n: int, **fields: Any) -> dict[str, Any]:
    return {"site": "s", "device": f"d{n}", "metric": "m", "value": n, "id": f"id-{n}", **fields}


def ndjson(items: list[Any]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def fed(body: bytes, chunk_bytes: int, max_batch: int = 1000) -> NdjsonLines:
    lines = NdjsonLines(max_batch)
    for start in range(0, len(body), chunk_bytes):
        lines.feed(body[start : start + chunk_bytes])
    return lines


def test_a_single_reading_is_a_list_of_one() -> None:
    [one] = parse_readings(b'{"device": "d", "metric": "m", "value": 1}', max_batch=1)
    assert (one.topic, one.value) == ("default.d.m", 1.0)


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


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 100_000])
def test_ndjson_in_any_chunks_is_the_same_batch_as_a_json_array(chunk_bytes: int) -> None:
    items = [reading(n, tags={"room": "ü-ß"}) for n in range(20)]  # multi-byte characters split across chunks too
    from_lines = fed(ndjson(items), chunk_bytes).readings()
    assert from_lines == parse_readings(json.dumps(items).encode(), max_batch=20)


def test_blank_lines_crlf_and_a_missing_last_newline_are_accepted() -> None:
    body = b'\n{"device": "a", "metric": "m", "value": 1}\r\n\r\n   \n{"device": "b", "metric": "m", "value": 2}'
    assert [r.device for r in fed(body, 5).readings()] == ["a", "b"]


def test_ndjson_errors_name_the_index_and_the_line() -> None:
    body = b"\n".join([json.dumps(reading(0)).encode(), b"", json.dumps(reading(1, value="hot")).encode(), b"7"])
    with pytest.raises(InvalidReadings) as invalid:
        fed(body, 10).readings()
    assert invalid.value.details == [
        {"index": 1, "field": "value", "message": "Input should be a valid number", "line": 3},
        {"index": 2, "field": None, "message": "Input should be a valid dictionary or instance of Reading", "line": 4},
    ]
    assert "2 of 3 readings are invalid (first at line 3)" in invalid.value.message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"device": "d",', "line 2: malformed JSON: Expecting property name enclosed in double quotes at column 16"),
        (b'{"device": "\xff"}', "line 2: the body is not UTF-8"),
        (b"[" * 100_000, "line 2: JSON nested too deeply"),
    ],
)
def test_a_malformed_line_is_named(line: bytes, message: str) -> None:
    lines = NdjsonLines(10)
    with pytest.raises(MalformedJson) as malformed:
        lines.feed(json.dumps(reading(0)).encode() + b"\n" + line + b"\n")
    assert malformed.value.status == 400
    assert malformed.value.message.startswith(message)


def test_ndjson_stops_at_the_first_line_past_max_batch() -> None:
    lines = NdjsonLines(max_batch=3)
    lines.feed(ndjson([reading(n) for n in range(3)]))
    with pytest.raises(BatchTooLarge, match="at most 3 readings"):
        lines.feed(ndjson([reading(3)]))  # refused at once: the rest of the body is never read


@pytest.mark.parametrize("body", [b"", b"\n\n  \n"])
def test_ndjson_without_a_reading_is_422(body: bytes) -> None:
    with pytest.raises(InvalidReadings, match="no reading"):
        fed(body, 3).readings()


def test_a_json_array_past_max_batch_is_refused_before_the_rest_is_parsed() -> None:
    # The syntax error at the end is never reached: parsing stopped at element 1001.
    with pytest.raises(BatchTooLarge, match="at most 1000 readings"):
        parse_readings(b"[" + b"[]," * 3_000_000 + b"oops]", max_batch=1000)
    with pytest.raises(BatchTooLarge, match="at most 1000 readings"):
        parse_readings(b"[" + b"1, " * 3_000_000 + b"oops]", max_batch=1000)


COMMAS = '"' + "," * 100 + '"'  # commas inside a string count too: parsed element by element with max_batch=1


@pytest.mark.parametrize(
    "text",
    [
        f"[{COMMAS} 2]",
        f"[{COMMAS},]",
        f"[{COMMAS}",
        f"[{COMMAS},",
        f"[{COMMAS}] x",
        f"[ {COMMAS} ,\n ]",
        f"[,{COMMAS}]",
    ],
)
def test_an_array_parsed_element_by_element_has_the_errors_json_loads_gives(text: str) -> None:
    with pytest.raises(MalformedJson) as whole:
        parse_readings(text.encode(), max_batch=1000)  # few commas for 1000 readings: parsed whole
    with pytest.raises(MalformedJson) as element_by_element:
        parse_readings(text.encode(), max_batch=1)
    assert element_by_element.value.message == whole.value.message


def test_an_array_parsed_element_by_element_gives_the_same_readings() -> None:
    items = [reading(n, tags={"note": "a, b, c, " * 20}) for n in range(3)]
    body = json.dumps(items, indent=2).encode()
    assert body.count(b",") > 32 * 3  # element by element
    assert parse_readings(body, max_batch=3) == parse_readings(body, max_batch=1000)


HUGE = "9" * 400
OUT_OF_RANGE_TS = [HUGE, "-" + HUGE, "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1e308", "253402214400", "-1"]


@pytest.mark.parametrize("ts", OUT_OF_RANGE_TS)
def test_a_ts_out_of_range_is_422_naming_ts_in_json_and_ndjson(ts: str) -> None:
    body = b'{"device": "d", "metric": "m", "value": 1, "ts": %s}' % ts.encode()
    with pytest.raises(InvalidReadings) as as_json:
        parse_readings(body, max_batch=1)
    with pytest.raises(InvalidReadings) as as_ndjson:
        fed(body + b"\n", 7).readings()
    for invalid in (as_json.value, as_ndjson.value):
        assert invalid.field == "ts"
        assert invalid.details is not None
        assert invalid.details[0]["message"] == "Value error, ts in epoch seconds must be between 0 and year 9999"


@pytest.mark.parametrize("value", [HUGE, "-" + HUGE, "1e400", "NaN", "-Infinity"])
def test_a_value_out_of_range_is_422_naming_value(value: str) -> None:
    with pytest.raises(InvalidReadings) as invalid:
        parse_readings(b'{"device": "d", "metric": "m", "value": %s}' % value.encode(), max_batch=1)
    assert invalid.value.field == "value"


def mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid nine times in ten: most bodies pass validation and take pydantic-core's path."""
    return st.integers(0, 9).flatmap(lambda draw: other if draw == 0 else valid)


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40))
VALID_TOKENS = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
TOKENS = mostly(VALID_TOKENS, st.text(max_size=70))
READINGS_AS_SENT = st.fixed_dictionaries(
    {"device": TOKENS, "metric": TOKENS, "value": mostly(st.floats() | st.integers(), JSON_VALUES)},
    optional={
        "site": TOKENS,
        "unit": mostly(st.text(max_size=32), st.text(min_size=33) | JSON_VALUES),
        "tags": mostly(
            st.dictionaries(VALID_TOKENS, st.text(max_size=256), max_size=16),
            st.dictionaries(st.text(), st.text(max_size=300), max_size=18) | JSON_VALUES,
        ),
        "id": mostly(st.from_regex(r"[\x21-\x7e]{1,128}", fullmatch=True), st.text(max_size=130) | JSON_VALUES),
        "ts": mostly(st.datetimes(timezones=st.timezones()).map(datetime.isoformat) | st.floats(0, 1e10), JSON_VALUES),
    },
)


def outcome(parse: Callable[[], list[Reading]]) -> Any:
    """What a client would see: the readings, or the error's status and field."""
    try:
        return [reading.model_dump() for reading in parse()]
    except ApiError as err:
        return (err.status, err.field)


@settings(max_examples=300, deadline=None, database=None)
@given(items=st.lists(READINGS_AS_SENT, min_size=1, max_size=3), single=st.booleans(), ascii_only=st.booleans())
def test_a_json_body_gives_what_the_same_readings_as_ndjson_give(
    items: list[dict[str, Any]], single: bool, ascii_only: bool
) -> None:
    # A valid JSON body is validated from its bytes by pydantic-core; NDJSON lines always take json.loads and
    # validate_python. Strings are sent escaped (\u00e9, surrogate pairs) or as UTF-8.
    items = items[:1] if single else items
    body = json.dumps(items[0] if single else items, ensure_ascii=ascii_only).encode()
    lines = b"".join(json.dumps(item, ensure_ascii=ascii_only).encode() + b"\n" for item in items)
    assert outcome(lambda: parse_readings(body, max_batch=10)) == outcome(lambda: fed(lines, 1000).readings())
