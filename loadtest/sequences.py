"""Per-device reading counters: how a dashboard tells a lost or repeated reading from a normal one.

Stream sequences count every topic, so a dashboard cannot find gaps in its event ids. Each load-test
device numbers its readings instead (``id`` = ``<device>-<counter>``, counting from 1 without holes),
and each dashboard checks, per device, that the counters it sees go up by exactly one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


def reading_id(device: str, counter: int) -> str:
    """The id a load-test device gives its reading number ``counter``."""
    return f"{device}-{counter}"


def parse_reading_id(device: str, reading_id_: str) -> int | None:
    """The counter of a load-test reading of ``device``, or None for a reading that is not one of ours."""
    prefix, dash, counter = reading_id_.rpartition("-")
    if not dash or prefix != device or not counter.isascii() or not counter.isdigit():
        return None
    return int(counter)


class Verdict(Enum):
    """What one reading means for its device's sequence."""

    FIRST = "first"  # the first reading seen of this device: a dashboard may join at any point
    NEXT = "next"
    GAP = "gap"  # readings between the last one seen and this one never arrived
    DUPLICATE = "duplicate"  # seen already, or older than one seen (a repeat or a reordering)


@dataclass(frozen=True, slots=True)
class Observation:
    verdict: Verdict
    missing: int = 0  # readings skipped, for a GAP
    previous: int | None = None  # the device's last counter before this one, for a GAP or a DUPLICATE


_FIRST = Observation(Verdict.FIRST)
_NEXT = Observation(Verdict.NEXT)


class SequenceTracker:
    """The last counter seen per device, kept across reconnects: a resume must continue each sequence."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def observe(self, device: str, counter: int) -> Observation:
        """Record a reading and say whether it continues its device's sequence."""
        previous = self._last.get(device)
        if previous is None:
            self._last[device] = counter
            return _FIRST
        if counter <= previous:
            return Observation(Verdict.DUPLICATE, previous=previous)
        self._last[device] = counter
        if counter == previous + 1:
            return _NEXT
        return Observation(Verdict.GAP, missing=counter - previous - 1, previous=previous)

    def __len__(self) -> int:
        return len(self._last)
