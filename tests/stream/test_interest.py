"""The live feed's filters: what a process's streams follow, as few JetStream filter subjects as allowed."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.topics import Pattern
from stream.interest import Interest, live_filters

# Every topic over a few literals and one more token no pattern names, to compare what patterns match.
TOPICS = list(itertools.product(("a", "b", "c", "z"), repeat=3))
PATTERN_TEXTS = [".".join(tokens) for tokens in itertools.product(("a", "b", "c", "*"), repeat=3)] + [
    ".".join([*head, ">"]) for size in range(3) for head in itertools.product(("a", "b", "*"), repeat=size)
]


def parsed(*texts: str) -> list[Pattern]:
    return [Pattern.parse(text) for text in texts]


def texts(patterns: list[Pattern]) -> list[str]:
    return [str(pattern) for pattern in patterns]


@pytest.mark.parametrize(
    ("patterns", "filters"),
    [
        (["a.>", "a.d.m", "b.d.m"], ["a.>", "b.d.m"]),  # a covered pattern needs no filter of its own
        (["a.*.*", "a.>", "a.*.>"], ["a.>"]),  # one pattern written three ways
        (["*.*.*", "a.d.m", "b.>"], [">"]),
        (["a.*.t", "*.d.t"], ["*.d.t", "a.*.t"]),  # overlapping in part: JetStream takes both, sends a.d.t once
        (["b.d.m", "b.d.m", "a.d.m"], ["a.d.m", "b.d.m"]),
    ],
)
def test_the_filters_are_the_patterns_none_covering_another(patterns: list[str], filters: list[str]) -> None:
    assert texts(live_filters(parsed(*patterns), limit=10)) == filters


def test_past_the_limit_whole_sites_are_followed_the_busiest_first() -> None:
    patterns = parsed("a.d1.m", "a.d2.m", "b.d1.m", "b.d2.m", "b.d3.m", "c.d1.m")
    assert texts(live_filters(patterns, limit=4)) == ["a.d1.m", "a.d2.m", "b.>", "c.d1.m"]
    assert texts(live_filters(patterns, limit=3)) == ["a.>", "b.>", "c.d1.m"]


def test_when_whole_sites_are_still_too_many_everything_is_followed() -> None:
    assert texts(live_filters(parsed("a.d.m", "b.d.m"), limit=1)) == [">"]
    # a site with one pattern gains nothing from being followed whole
    assert texts(live_filters(parsed("*.d.t", "a.x.y", "b.x.y"), limit=2)) == [">"]


@given(st.lists(st.sampled_from(PATTERN_TEXTS), min_size=1, max_size=12), st.integers(min_value=1, max_value=6))
def test_the_filters_match_everything_asked_within_the_limit_and_jetstream_takes_them(
    chosen: list[str], limit: int
) -> None:
    patterns = parsed(*chosen)
    filters = live_filters(patterns, limit)
    assert 1 <= len(filters) <= limit
    assert not [(f, g) for f in filters for g in filters if f != g and f.covers(g)]  # JetStream refuses these
    carried = {topic for topic in TOPICS if any(f.matches(topic) for f in filters)}
    assert {topic for topic in TOPICS if any(p.matches(topic) for p in patterns)} <= carried
    if len(set(p.canonical() for p in patterns)) <= limit and not any(
        p != q and p.covers(q) for p in patterns for q in patterns
    ):
        assert sorted(texts(filters)) == sorted({str(p.canonical()) for p in patterns})  # exact while they fit


def test_interest_says_whether_the_filters_in_use_carry_a_stream() -> None:
    interest = Interest(limit=8)
    site_a, device_a, site_b = parsed("a.>", "a.d.m", "b.>")
    assert not interest.add([site_a])  # no filters yet
    interest.use(interest.wanted())
    assert texts(interest.filters) == ["a.>"]
    assert interest.add([device_a])  # a.> carries it
    assert not interest.add([device_a, site_b])
    interest.use(interest.wanted())
    assert texts(interest.filters) == ["a.>", "b.>"]
    interest.remove([device_a])
    assert not interest.shrinkable  # a.d.m is still followed by the other stream that asked for it
    interest.remove([device_a])
    assert interest.shrinkable
    assert texts(interest.wanted()) == ["a.>", "b.>"]
    interest.remove([site_b])
    assert texts(interest.wanted()) == ["a.>"]
    interest.remove([site_a])
    assert interest.wanted() == []
