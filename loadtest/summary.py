"""What a load test found, in numbers a reader checks first: rates in and out, latency, losses.

Locust's own statistics count requests; readings posted, gaps and duplicates are counted here, in
``Counters`` that workers send to the master with their stats reports. This module imports no Locust
(and so no gevent): the runner reads the summary file with it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class Counters:
    """Counts of one Locust process (or, on the master, of all workers)."""

    readings_posted: int = 0  # acknowledged with 202, each reading once however many tries it took
    gaps: int = 0  # places where a device's sequence skipped readings
    missing: int = 0  # readings skipped in those places
    duplicates: int = 0  # readings seen again, or after a later one of the same device
    resets: int = 0  # `event: reset`: the server could not resume from our Last-Event-ID
    connections: int = 0  # streams opened (200 event-stream)
    resumes: int = 0  # of those, opened with Last-Event-ID
    storm_drops: int = 0  # connections the reconnect storm closed
    storms: int = 0  # reconnect storms started (by the shape, on the master or the single process)

    def add(self, other: dict[str, int]) -> None:
        """Add a worker's report (a ``take()`` result); unknown names are ignored, for mixed versions."""
        for name in self.names():
            setattr(self, name, getattr(self, name) + int(other.get(name, 0)))

    def take(self) -> dict[str, int]:
        """The counts since the last ``take()``, and zero again: a worker reports increments."""
        taken = {name: getattr(self, name) for name in self.names()}
        for name in taken:
            setattr(self, name, 0)
        return taken

    @classmethod
    def names(cls) -> list[str]:
        """The counters' names, as they travel in worker reports and the summary file."""
        return [item.name for item in fields(cls)]


counters = Counters()
"""This process's counts: the users' on a worker or a single process, everyone's on the master."""


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures of one run; ``ok`` is what a test or CI checks."""

    shape: str
    duration_s: float
    devices: int
    dashboards: int
    posts: int
    events: int  # readings received live: what the end-to-end latency is about
    replayed: int  # readings received from a replay after a resume: their latency includes the time away
    e2e_ms: dict[str, float]
    replay_ms: dict[str, float]
    post_ms: dict[str, float]
    requests: int
    failures: int
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def readings_per_s(self) -> float:
        """Readings acknowledged per second."""
        return self.counters.get("readings_posted", 0) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def events_per_s(self) -> float:
        """Readings delivered per second, live and replayed."""
        return (self.events + self.replayed) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        """Something was measured, and nothing failed, went missing or came twice."""
        counted = self.counters
        return (
            self.failures == 0
            and counted.get("missing", 0) == 0
            and counted.get("duplicates", 0) == 0
            and counted.get("resets", 0) == 0
            and counted.get("readings_posted", 0) > 0
            and self.events > 0
        )

    def lines(self) -> list[str]:
        """The summary as printed at the end of a run."""
        counted = self.counters

        def ms(figures: dict[str, float], names: tuple[str, ...]) -> str:
            return "  ".join(f"{name} {figures.get(name, 0):g} ms" for name in names)

        lines = [
            f"load test summary: shape {self.shape}, {self.duration_s:.1f} s, "
            f"{self.devices} devices, {self.dashboards} dashboards",
            f"  readings in   {counted.get('readings_posted', 0):,} ({self.readings_per_s:,.1f}/s) "
            f"in {self.posts:,} POSTs ({ms(self.post_ms, ('p50', 'p99'))})",
            f"  events out    {self.events + self.replayed:,} ({self.events_per_s:,.1f}/s): {self.events:,} live, "
            f"{self.replayed:,} replayed after a resume",
            f"  end to end    {ms(self.e2e_ms, ('p50', 'p95', 'p99', 'max'))}   (live readings)",
            f"  replayed      {ms(self.replay_ms, ('p50', 'p99', 'max'))}   (includes the time away)"
            if self.replayed
            else "  replayed      none",
            f"  failures {self.failures:,} of {self.requests:,} requests   "
            f"gaps {counted.get('gaps', 0):,} ({counted.get('missing', 0):,} readings missing)   "
            f"duplicates {counted.get('duplicates', 0):,}   resets {counted.get('resets', 0):,}",
            f"  streams       {counted.get('connections', 0):,} opened, {counted.get('resumes', 0):,} of them "
            f"resumed with Last-Event-ID; {counted.get('storm_drops', 0):,} dropped by "
            f"{counted.get('storms', 0):,} reconnect storm(s)",
            f"  result        {'OK' if self.ok else 'FAILED'}",
        ]
        return lines

    def write(self, path: Path) -> None:
        """Save as JSON, with the derived rates, for the runner and for CI."""
        data: dict[str, Any] = asdict(self)
        data.update(readings_per_s=self.readings_per_s, events_per_s=self.events_per_s, ok=self.ok)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Summary:
        """Load what ``write`` saved (the derived figures are computed again)."""
        data = json.loads(path.read_text())
        return cls(**{item.name: data[item.name] for item in fields(cls)})
