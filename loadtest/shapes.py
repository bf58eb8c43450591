"""Load shapes: steady, ramp, and a reconnect storm, chosen with ``--shape``.

Locust runs the first ``LoadTestShape`` it finds in a locustfile, so there is one, and the option picks
what it does. Device and dashboard users keep the proportion of ``--devices`` to ``--dashboards`` (their
weights) at every user count. ``--run-time`` ends the shape (``use_common_options``); without it the
shape runs until stopped (the web UI), its timings then fractions of a nominal minute.
"""

from __future__ import annotations

import logging
import math

from locust import LoadTestShape

from loadtest.config import LoadConfig
from loadtest.summary import counters

STORM_MESSAGE = "telemetry_reconnect_storm"

logger = logging.getLogger(__name__)


def users_at(config: LoadConfig, elapsed_s: float) -> int:
    """Users wanted ``elapsed_s`` into the run: all at once, or a straight line up over ``ramp_s``."""
    if config.shape != "ramp" or elapsed_s >= config.ramp_s:
        return config.users
    return max(1, math.ceil(config.users * elapsed_s / config.ramp_s))


class TelemetryShape(LoadTestShape):
    """Ticks once a second on the master (or the single process): the user count, and the storm once."""

    use_common_options = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._stormed = False

    def reset_time(self) -> None:
        """Called at each start (also a second run from the web UI): the storm may come again."""
        super().reset_time()  # type: ignore[no-untyped-call]
        self._stormed = False

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None and self.runner.environment.parsed_options is not None
        config = LoadConfig.from_options(self.runner.environment.parsed_options)
        elapsed_s = self.get_run_time()  # type: ignore[no-untyped-call]
        if config.run_time_s is not None and elapsed_s >= config.run_time_s:
            return None
        if config.shape == "storm" and not self._stormed and elapsed_s >= config.storm_at_s:
            self._stormed = True
            counters.storms += 1
            logger.info("reconnect storm at %.1f s: every dashboard drops its stream and resumes", elapsed_s)
            self.runner.send_message(STORM_MESSAGE, {"pause_ms": config.storm_pause_ms})
        # Spawn everything wanted now within about a second: the shape, not the spawn rate, sets the pace.
        return users_at(config, elapsed_s), float(max(config.users, 1))
