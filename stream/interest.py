"""What the live feed carries: the open streams' patterns, as a bounded set of JetStream filter subjects.

A stream process consumes only what its clients follow, so that N processes do not each receive every
reading. JetStream takes several filter subjects on one consumer and refuses one that another covers
(partial overlaps are allowed: a message matching two is delivered once). Past ``limit`` filters, whole
sites are followed (the site with the most patterns first), then everything: a filter may carry more than
its patterns match, as the hub routes each reading by its own index anyway.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import chain

from core.topics import ONE_TOKEN, REST, Pattern

EVERYTHING = Pattern((REST,))


class Interest:
    """The patterns of the open streams (counted), and the filters the live consumer uses now."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[Pattern, int] = {}
        self.filters: list[Pattern] = []
        self.shrinkable = False  # a pattern lost its last stream since the filters were chosen
        self._carried: set[Pattern] = set()  # patterns the filters are known to cover

    def add(self, patterns: Iterable[Pattern]) -> bool:
        """Count a stream's patterns; True when the current filters carry them all."""
        carried = True
        for pattern in patterns:
            self.counts[pattern] = self.counts.get(pattern, 0) + 1
            if pattern in self._carried:
                continue
            if any(live.covers(pattern) for live in self.filters):
                self._carried.add(pattern)
            else:
                carried = False
        return carried

    def remove(self, patterns: Iterable[Pattern]) -> None:
        """Undo ``add`` for a stream that ended."""
        for pattern in patterns:
            left = self.counts[pattern] - 1
            if left:
                self.counts[pattern] = left
            else:
                del self.counts[pattern]
                self._carried.discard(pattern)
                self.shrinkable = True

    def wanted(self) -> list[Pattern]:
        """The filters the patterns counted now call for."""
        return live_filters(self.counts, self.limit)

    def use(self, filters: list[Pattern]) -> None:
        """The live consumer now filters on ``filters`` (from ``wanted``: they carry every pattern counted)."""
        self.filters = filters
        self._carried = set(self.counts)
        self.shrinkable = False


def live_filters(patterns: Iterable[Pattern], limit: int) -> list[Pattern]:
    """At most ``limit`` patterns, none covering another, matching at least every topic ``patterns`` match.

    Exact while they fit; then whole sites, the site with the most patterns first; then everything."""
    kept = uncovered(pattern.canonical() for pattern in patterns)
    if len(kept) <= limit:
        return kept
    per_site = Counter(pattern.tokens[0] for pattern in kept if _literal_site(pattern))
    whole_sites: set[str] = set()
    count = len(kept)
    for site, patterns_of_site in per_site.most_common():
        if count <= limit:
            break
        whole_sites.add(site)
        count -= patterns_of_site - 1
    if count > limit:
        return [EVERYTHING]
    sites = [Pattern((site, REST)) for site in whole_sites]
    return uncovered(chain(sites, (pattern for pattern in kept if pattern.tokens[0] not in whole_sites)))


def uncovered(patterns: Iterable[Pattern]) -> list[Pattern]:
    """The distinct canonical patterns that no other one covers, in text order.

    A pattern of a literal site can only be covered by one of the same site or one with a wildcard site: compared
    site by site, not all against all (thousands of device patterns stay cheap)."""
    unique = sorted(set(patterns), key=str)
    wild = [pattern for pattern in unique if not _literal_site(pattern)]
    by_site: defaultdict[str, list[Pattern]] = defaultdict(list)
    for pattern in unique:
        if _literal_site(pattern):
            by_site[pattern.tokens[0]].append(pattern)
    groups = [(wild, wild), *((group, group + wild) for group in by_site.values())]
    kept = [
        pattern
        for group, rivals in groups
        for pattern in group
        if not any(rival is not pattern and rival.covers(pattern) for rival in rivals)
    ]
    return sorted(kept, key=str)


def _literal_site(pattern: Pattern) -> bool:
    return pattern.tokens[0] not in (ONE_TOKEN, REST)
