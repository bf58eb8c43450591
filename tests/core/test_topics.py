"""Topic patterns: what parses, what matches, and which filters JetStream may be given together."""

from __future__ import annotations

import pytest

from core.topics import InvalidPattern, Pattern, Subjects, distinct_filters


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("plant1.boiler.temp", "plant1.boiler.temp", True),
        ("plant1.*.temp", "plant1.boiler.temp", True),
        ("plant1.*.temp", "plant1.boiler.rpm", False),
        ("plant1.>", "plant1.boiler.temp", True),
        ("plant1.>", "plant2.boiler.temp", False),
        (">", "a.b.c", True),
        ("*.*.*", "a.b.c", True),
        ("*.b.>", "a.b.c", True),
        ("*.b.>", "a.x.c", False),
    ],
)
def test_matching(pattern: str, topic: str, expected: bool) -> None:
    assert Pattern.parse(pattern).matches(topic.split(".")) is expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("a..b", "token 2"),
        (">.x", "last token"),
        ("a.b", "never match"),
        ("a.b.c.d", "4 tokens"),
        ("a.b$.c", "token 2"),
        ("a.b c.d", "token 2"),
        ("a." + "x" * 65 + ".c", "token 2"),
        ("a.b*.c", "token 2"),
    ],
)
def test_invalid_patterns_say_why(text: str, complaint: str) -> None:
    with pytest.raises(InvalidPattern, match=complaint):
        Pattern.parse(text)


def test_a_text_parses_to_one_shared_pattern_and_a_bad_one_is_refused_each_time() -> None:
    """Patterns are immutable: the open streams of every dashboard on a pattern hold one between them."""
    assert Pattern.parse("plant1.*.temp") is Pattern.parse("plant1.*.temp")
    for _ in range(2):
        with pytest.raises(InvalidPattern, match="token 2"):
            Pattern.parse("plant1..temp")


def test_covered_filters_are_dropped_and_partial_overlaps_refused() -> None:
    parse = Pattern.parse
    assert distinct_filters([parse("a.>"), parse("a.b.c"), parse("x.*.c")]) == [parse("a.>"), parse("x.*.c")]
    assert distinct_filters([parse("a.*.c"), parse("a.b.*")]) is None
    assert distinct_filters([parse("a.b.c"), parse("a.b.c")]) == [parse("a.b.c")]


def test_subjects_round_trip_under_the_prefix() -> None:
    subjects = Subjects("telemetry")
    assert subjects.all == "telemetry.>"
    assert subjects.for_topic("s.d.m") == "telemetry.s.d.m"
    assert subjects.for_pattern(Pattern.parse("s.*.m")) == "telemetry.s.*.m"
    assert subjects.topic_of("telemetry.s.d.m") == "s.d.m"
    assert subjects.topic_of("other.s.d.m") is None
