"""Topic patterns checked against brute force and fuzzed: pattern containment is what the auth checks rely on
(``covers``), overlap what the stream's consumer filters rely on (``overlaps``)."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.topics import PATTERN_GRAMMAR, InvalidPattern, Pattern

LITERALS = ("a", "b")
# Every topic of three tokens over the literals and one more token no pattern names: a '*' or '>' then matches
# something no literal does.
TOPICS = list(itertools.product((*LITERALS, "c"), repeat=3))
# Every valid pattern over the literals: three tokens of literals and '*', or fewer followed by '>'.
PATTERNS = [Pattern.parse(".".join(head)) for head in itertools.product((*LITERALS, "*"), repeat=3)] + [
    Pattern.parse(".".join([*head, ">"]))
    for size in range(3)
    for head in itertools.product((*LITERALS, "*"), repeat=size)
]


def matched(pattern: Pattern) -> set[tuple[str, ...]]:
    return {topic for topic in TOPICS if pattern.matches(topic)}


@pytest.mark.parametrize("mine", PATTERNS, ids=str)
def test_covers_and_overlaps_agree_with_brute_force_for_every_pair(mine: Pattern) -> None:
    wrong = [
        (str(theirs), mine.covers(theirs), mine.overlaps(theirs))
        for theirs in PATTERNS
        if mine.covers(theirs) != (matched(theirs) <= matched(mine))
        or mine.overlaps(theirs) != bool(matched(mine) & matched(theirs))
    ]
    assert wrong == []


@given(st.text(alphabet="ab.*>-_ é\x00", max_size=12))
def test_any_text_is_a_pattern_that_prints_as_given_or_a_clear_refusal(text: str) -> None:
    try:
        pattern = Pattern.parse(text)
    except InvalidPattern as err:
        assert str(err)
    else:
        assert str(pattern) == text
        assert pattern.covers(pattern)


@given(st.one_of(st.from_regex(PATTERN_GRAMMAR, fullmatch=True), st.text(alphabet="ab.*>-_ \n", max_size=12)))
def test_the_documented_pattern_grammar_accepts_exactly_what_the_service_does(text: str) -> None:
    # The grammar is the topic parameter's "pattern" in the OpenAPI document: clients and fuzzers generate from it.
    try:
        Pattern.parse(text)
    except InvalidPattern:
        assert re.fullmatch(PATTERN_GRAMMAR, text) is None
    else:
        assert re.fullmatch(PATTERN_GRAMMAR, text) is not None
