"""``python -m bench.sidebyside``: two checkouts' stream services side by side, the same lockstep readings to both.

As in test_harness.py, the figures of a small run on a loaded machine mean nothing and are not judged: what is
checked is that both services got every reading of every round (the program fails on a lost one), and that each
round and the medians are printed with their ratio.
"""

from __future__ import annotations

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
