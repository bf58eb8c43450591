"""``python -m bench.run --only scaleout`` with tiny numbers: four stream processes, both live-feed designs, the rows.

As in test_harness.py, speed is not judged: what is checked is that both designs ran end to end against the real
services, that every dashboard got every reading of its site, that with the whole-stream feed every process received
every reading (what the design means), that with the interest feed each received about its own sites' readings (less
than half: the window's edges are read process by process, so the exact share is not judged), and that the goal row of
issue 16 has its ratio and a PASS or FAIL.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LABEL = "scale-out, 4 stream procs, 8 sites, 400 rdg/s"
SHARES = re.compile(r"max (\d+\.\d)%, mean (\d+\.\d)% of readings")


def test_a_tiny_run_measures_both_designs_and_delivers_every_reading(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    tiny = ["--scaleout-sites", "8", "--scaleout-rate", "400", "--scaleout-warmup-s", "0.5"]
    tiny += ["--scaleout-seconds", "1.5"]
    command = [sys.executable, "-m", "bench.run", "--quick", "--only", "scaleout", "--references", "", *tiny]
    result = subprocess.run(
        [*command, "--json", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["workload"]: row for row in json.loads(report.read_text())["rows"]}
    kinds = ("received per proc", "CPU per proc", "deliveries")
    assert list(rows) == [f"{LABEL}: {design}, {kind}" for design in ("whole stream", "interest") for kind in kinds]
    for design in ("whole stream", "interest"):
        deliveries = rows[f"{LABEL}: {design}, deliveries"]
        assert (deliveries["figure"], deliveries["ok"]) == ("0 lost, 0 extra", True), result.stdout
        cpu = rows[f"{LABEL}: {design}, CPU per proc"]
        assert re.fullmatch(r"\d+\.\d{3} CPU s/s \(max \d+\.\d{3}\)", cpu["figure"]), cpu
        shares = SHARES.fullmatch(rows[f"{LABEL}: {design}, received per proc"]["figure"])
        assert shares is not None, rows
        assert 0 < float(shares[2]) <= float(shares[1]) < 120  # a share of the readings stored, edges' skew aside
    whole = SHARES.fullmatch(rows[f"{LABEL}: whole stream, received per proc"]["figure"])
    assert whole is not None and 90 <= float(whole[2]) <= 110, rows  # each process got every reading
    interest = SHARES.fullmatch(rows[f"{LABEL}: interest, received per proc"]["figure"])
    assert interest is not None and float(interest[1]) < 50, rows  # each process got about its own quarter
    goal = rows[f"{LABEL}: interest, received per proc"]
    assert goal["target"] == "≤ 1.10x own sites" and isinstance(goal["ok"], bool), goal
    assert goal["reference"] == "own sites 25.0%" and re.fullmatch(r"\d+\.\d\dx", goal["ratio"]), goal
    assert re.fullmatch(r"\d+\.\d\dx", rows[f"{LABEL}: interest, CPU per proc"]["ratio"]), rows
    assert "scale-out whole stream, run 1:" in result.stdout and "scale-out interest, run 1:" in result.stdout


@pytest.mark.parametrize("sites", ["6", "4"])
def test_every_process_must_serve_as_many_sites_and_several(sites: str) -> None:
    command = [sys.executable, "-m", "bench.run", "--only", "scaleout", "--scaleout-sites", sites]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "--scaleout-sites" in result.stderr, result.stderr
