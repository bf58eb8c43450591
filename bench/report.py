"""The one table a run prints (workload, figure, reference, ratio, target) and the notes under it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Row:
    """One line of the table; ``ok`` is None for figures that have no target."""

    workload: str
    figure: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    ok: bool | None = None


@dataclass
class Report:
    """Rows and notes, filled as the workloads finish."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        """Append a row."""
        self.rows.append(row)

    def note(self, text: str) -> None:
        """Append a note printed under the table."""
        self.notes.append(text)

    def render(self) -> str:
        """The table as aligned text, then the notes."""
        header = Row("workload", "figure", "reference", "ratio", "target")
        cells = [[row.workload, row.figure, row.reference, row.ratio, target_cell(row)] for row in [header, *self.rows]]
        widths = [max(len(line[column]) for line in cells) for column in range(5)]
        lines = []
        for number, line in enumerate(cells):
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
            if number == 0:
                lines.append("  ".join("-" * width for width in widths))
        if self.notes:
            lines.append("")
            lines.extend(f"* {note}" for note in self.notes)
        return "\n".join(lines)


def target_cell(row: Row) -> str:
    """The target with a pass/fail mark when there is one."""
    if row.ok is None or not row.target:
        return row.target
    return f"{row.target} {'PASS' if row.ok else 'FAIL'}"


def times(value: float, reference: float) -> str:
    """A ratio such as ``1.52x``; ``n/a`` when the reference is not positive."""
    if reference <= 0 or math.isnan(value) or math.isnan(reference):
        return "n/a"
    return f"{value / reference:.2f}x"


def ratio_of(value: float, reference: float) -> float:
    """value / reference, NaN when undefined."""
    return value / reference if reference > 0 else float("nan")


def us(value: float) -> str:
    """Microseconds per event."""
    return f"{value:.2f} µs/event"
