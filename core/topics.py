"""Topics (``site.device.metric``), topic patterns, and the NATS subjects they map to.

Every token is checked against an allowlist, so nothing a client sends can inject a wildcard, an
empty token or an extra subject token.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOPIC_TOKENS = 3
ONE_TOKEN = "*"
REST = ">"
MAX_ECHOED_CHARS = 100
PARSED_PATTERNS_KEPT = 4096  # distinct texts whose pattern Pattern.parse keeps: a deployment's dashboards follow fewer
_TOKEN_OR_ANY = rf"(?:{TOKEN_RE.pattern}|\*)"
# What Pattern.parse accepts, as a regular expression both Python and JSON Schema (OpenAPI) read the same way.
PATTERN_GRAMMAR = rf"^(?:(?:{_TOKEN_OR_ANY}\.){{0,2}}>|{_TOKEN_OR_ANY}\.{_TOKEN_OR_ANY}\.{_TOKEN_OR_ANY})$"


def quoted(text: str) -> str:
    """``text`` as an error message shows it: quoted, and cut short (a client's 10k-character value is not echoed)."""
    return repr(text[:MAX_ECHOED_CHARS]) + ("..." if len(text) > MAX_ECHOED_CHARS else "")


class InvalidPattern(ValueError):
    """A topic pattern that cannot be subscribed to; the message says why."""


def topic_of(site: str, device: str, metric: str) -> str:
    """The topic of a reading; its tokens were validated by the reading model."""
    return f"{site}.{device}.{metric}"


@dataclass(frozen=True, slots=True)
class Pattern:
    """A topic pattern: tokens that are literal, ``*`` (any one token), or a final ``>`` (the rest)."""

    tokens: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """Parse and validate a pattern such as ``plant1.*.temperature`` or ``plant1.>``.

        The same text gives the same pattern (it is immutable): the open streams of every dashboard on a pattern hold
        one between them, not one each.
        """
        return _parse_kept(text)

    @staticmethod
    def _parse(text: str) -> Pattern:
        """``parse`` without the cache (an invalid pattern raises each time, and is not kept)."""
        if not text:
            raise InvalidPattern("a pattern must not be empty")
        tokens = tuple(text.split("."))
        for index, token in enumerate(tokens):
            if token == REST:
                if index != len(tokens) - 1:
                    raise InvalidPattern(f"'>' may only be the last token in {quoted(text)}")
            elif token != ONE_TOKEN and not TOKEN_RE.fullmatch(token):
                raise InvalidPattern(
                    f"token {index + 1} of {quoted(text)} is {quoted(token)}: a token is 1-64 of A-Z a-z 0-9 _ -, "
                    "or '*', or a final '>'"
                )
        if len(tokens) > TOPIC_TOKENS:
            raise InvalidPattern(f"{quoted(text)} has {len(tokens)} tokens; a topic has 3 (site.device.metric)")
        if len(tokens) < TOPIC_TOKENS and tokens[-1] != REST:
            raise InvalidPattern(
                f"{quoted(text)} has {len(tokens)} tokens and would never match a topic (site.device.metric); "
                "end it with '>' to match the rest"
            )
        return Pattern(tokens)

    def __str__(self) -> str:
        return ".".join(self.tokens)

    def matches(self, topic_tokens: tuple[str, ...] | list[str]) -> bool:
        """Whether a topic, split into its tokens, matches this pattern."""
        for index, token in enumerate(self.tokens):
            if token == REST:
                return len(topic_tokens) > index
            if index >= len(topic_tokens) or (token != ONE_TOKEN and token != topic_tokens[index]):
                return False
        return len(topic_tokens) == len(self.tokens)

    def covers(self, other: Pattern) -> bool:
        """Whether every topic ``other`` matches is matched by this pattern too.

        Topics have exactly three tokens: ``*.>`` covers ``>`` (both match every topic), as NATS subjects would not.
        """
        return all(
            mine in (ONE_TOKEN, theirs) for mine, theirs in zip(self._positions(), other._positions(), strict=True)
        )

    def overlaps(self, other: Pattern) -> bool:
        """Whether some topic is matched by both patterns."""
        return all(
            ONE_TOKEN in (mine, theirs) or mine == theirs
            for mine, theirs in zip(self._positions(), other._positions(), strict=True)
        )

    def canonical(self) -> Pattern:
        """The same pattern written one way: trailing ``*`` tokens as one ``>`` (``s.*.*`` and ``s.>`` match alike)."""
        positions = self._positions()
        literal = len(positions)
        while literal and positions[literal - 1] == ONE_TOKEN:
            literal -= 1
        return Pattern(positions if literal == len(positions) else (*positions[:literal], REST))

    def _positions(self) -> tuple[str, ...]:
        """One literal or ``*`` per topic token: a final ``>`` stands for ``*`` up to the third token."""
        if self.tokens[-1] != REST:
            return self.tokens
        return self.tokens[:-1] + (ONE_TOKEN,) * (TOPIC_TOKENS - len(self.tokens) + 1)


_parse_kept = functools.lru_cache(maxsize=PARSED_PATTERNS_KEPT)(Pattern._parse)


def distinct_filters(patterns: list[Pattern]) -> list[Pattern] | None:
    """The patterns with covered ones removed, or None when two still partly overlap.

    JetStream rejects a consumer whose filter subjects overlap, so a caller that gets None must
    filter on the whole prefix and match in process instead.
    """
    unique = list(dict.fromkeys(patterns))
    kept = [p for p in unique if not any(q != p and q.covers(p) for q in unique)]
    for index, pattern in enumerate(kept):
        if any(pattern.overlaps(other) for other in kept[index + 1 :]):
            return None
    return kept


@dataclass(frozen=True, slots=True)
class Subjects:
    """Maps topics and patterns to NATS subjects under one fixed prefix, and back."""

    prefix: str

    @property
    def all(self) -> str:
        """The subject filter of every reading: what the stream holds."""
        return f"{self.prefix}.>"

    def for_topic(self, topic: str) -> str:
        """The subject a reading with this (validated) topic is published on."""
        return f"{self.prefix}.{topic}"

    def for_pattern(self, pattern: Pattern) -> str:
        """The subject filter that matches what the pattern matches."""
        return f"{self.prefix}.{pattern}"

    def topic_of(self, subject: str) -> str | None:
        """The topic of a subject under our prefix, or None for a subject that is not ours."""
        head, dot, topic = subject.partition(".")
        if head != self.prefix or not dot:
            return None
        return topic
