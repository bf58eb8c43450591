"""The chart, loaded once per test module by Helm's Go SDK (rendering helpers: support/chart.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.chart import CHART_DIR, helm


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    """The chart loaded once by Helm's Go SDK."""
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded
