"""``python -m bench.ingest --quick --only ceiling``: the ingest, the HTTP ceiling and the bare publisher in three
interleaved rounds, the ingest and the HTTP ceiling in three rounds side by side, and the goal rows of issue 16
with their ratios.

As in test_harness.py, the figures of a quick run on a loaded machine mean nothing and are not judged: what is
checked is that every contender ran in every round against the real services, and that each goal has its row, its
ratio and a PASS or FAIL.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNS = 3
CONTENDERS = ("ingest", "HTTP ceiling", "bare publisher")
SIDE_BY_SIDE = "single readings, 32 clients, side by side: ingest vs HTTP ceiling"
GOALS = {
    SIDE_BY_SIDE: "≥ 0.7x HTTP ceiling",
    "batches of 100, 8 clients: ingest vs bare publisher": "≥ 0.8x bare publisher",
}
REPORTED = (
    "single readings, 32 clients: ingest vs HTTP ceiling",  # alone: its goal is judged side by side
    "single readings, 32 clients: ingest vs bare publisher",
)


def test_a_quick_run_has_every_contender_in_every_round_and_a_row_for_each_goal(tmp_path: Path) -> None:
    report = tmp_path / "ingest.json"
    command = [sys.executable, "-m", "bench.ingest", "--quick", "--only", "ceiling", "--json", str(report)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(report.read_text())
    table = document["table"]
    rows = {row["workload"]: row for row in document["rows"]}
    assert set(rows) == {*GOALS, *REPORTED}, result.stdout
    for name, target in GOALS.items():
        assert rows[name]["target"] == target
        assert isinstance(rows[name]["ok"], bool)  # PASS or FAIL: the figure itself is not judged
        assert re.fullmatch(r"\d+\.\d\dx", rows[name]["ratio"]), rows[name]
    for name in REPORTED:
        assert (rows[name]["target"], rows[name]["ok"]) == ("", None)
        assert re.fullmatch(r"\d+\.\d\dx", rows[name]["ratio"]), rows[name]
    for workload in ("single readings, 32 clients", "batches of 100, 8 clients"):
        (runs,) = re.findall(rf"\* {workload}: readings / CPU s per run, (.*) \(medians of {RUNS} compared\)", table)
        parts = [
            re.fullmatch(r"(ingest|HTTP ceiling|bare publisher) ([\d,]+(?: / [\d,]+)*)", p) for p in runs.split("; ")
        ]
        figures = {part[1]: [int(f.replace(",", "")) for f in part[2].split(" / ")] for part in parts if part}
        assert {name: len(f) for name, f in figures.items()} == dict.fromkeys(CONTENDERS, RUNS), runs
        # Each row holds the medians of the runs (rounding keeps a median where it is).
        medians = {name: f"{statistics.median(f):,}" for name, f in figures.items()}
        for name in (f"{workload}: ingest vs {reference}" for reference in ("HTTP ceiling", "bare publisher")):
            if name not in rows:  # batches against the HTTP ceiling: not a row (bench/README.md, section 7)
                continue
            reference = name.rsplit(" vs ", 1)[1]
            assert rows[name]["figure"] == f"{medians['ingest']} readings/CPU s", rows[name]
            assert rows[name]["reference"].startswith(f"{reference} {medians[reference]} ("), rows[name]
    (paired,) = re.findall(
        r"\* single readings, 32 clients, side by side: readings / CPU s per run, ingest ([\d,/ ]+); "
        r"HTTP ceiling ([\d,/ ]+) \(medians of 3 compared\)",
        table,
    )
    ingest, ceiling = ([int(f.replace(",", "")) for f in runs.split(" / ")] for runs in paired)
    assert (len(ingest), len(ceiling)) == (RUNS, RUNS), paired
    assert rows[SIDE_BY_SIDE]["figure"] == f"{statistics.median(ingest):,} readings/CPU s"
    assert rows[SIDE_BY_SIDE]["reference"] == f"HTTP ceiling {statistics.median(ceiling):,} (a message per request)"
    # Interleaved: each round starts with another contender.
    order = re.findall(r"\] run (\d) of \d, ([\w ]+), single readings", result.stderr)
    firsts = {run: contender for run, contender in reversed(order)}
    assert sorted(firsts.values()) == sorted(CONTENDERS), order
    assert table == result.stdout.rstrip("\n")
