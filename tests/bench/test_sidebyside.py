"""Side by side in lockstep: ``python -m bench.sidebyside`` (two checkouts' stream services, the same lockstep
readings to both) and bench.run's workload ``sidebyside`` (the stream service beside the ceiling).

As in test_harness.py, the figures of a small run on a loaded machine mean nothing and are not judged: what is
checked is that every server got every reading of every round (either fails on a lost one), and that each round and
the medians are reported with their ratio, and bench.run's rows with their goal.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINE = r"before \d+\.\d\d µs/delivery, after \d+\.\d\d, after/before (\d+\.\d{3}|nan)"


def test_the_same_checkout_twice_gets_every_reading_and_a_ratio_per_round() -> None:
    command = [sys.executable, "-m", "bench.sidebyside", str(ROOT), str(ROOT)]
    command += ["--subscribers", "50", "--readings", "100", "--rounds", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["round 1", "round 2", "median of 2"], result.stdout
    for line in lines:
        assert re.fullmatch(rf"[^:]+: {LINE}", line), line


def test_a_directory_that_is_not_a_checkout_is_refused(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.sidebyside", str(tmp_path), str(ROOT)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert f"{tmp_path}: not a checkout of this project" in result.stderr


def test_the_workload_holds_the_stream_against_the_ceiling_in_the_same_rounds(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    command = [sys.executable, "-m", "bench.run", "--quick", "--only", "sidebyside", "--references", ""]
    result = subprocess.run(
        [*command, "--json", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads(report.read_text())
    rows = [row for row in written["rows"] if row["workload"].startswith("fan-out lockstep side by side")]
    assert [row["workload"] for row in rows] == [
        "fan-out lockstep side by side, 50 subs: stream vs ceiling",
        "fan-out lockstep side by side, 200 subs: stream vs ceiling",
    ], result.stdout
    for row in rows:
        assert row["target"] == "≤ 1.5x ceiling" and isinstance(row["ok"], bool), row
        assert re.fullmatch(r"ceiling \d+\.\d\d \(runs \d+\.\d\d\)", row["reference"]), row
    notes = [line for line in written["table"].splitlines() if line.startswith("* fan-out lockstep side by side")]
    assert len(notes) == 2 and all("stream / ceiling" in note for note in notes), written["table"]
    assert "failed" not in written["table"], written["table"]
