"""The load test's own options: Locust command-line flags, ``LOCUST_*`` variables, fields of the web UI.

The master parses them and hands them to its workers with each spawn message, so in a distributed run
they are set on the master only.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:
    from locust.argument_parser import LocustArgumentParser

Shape = Literal["steady", "ramp", "storm"]
SHAPES: tuple[Shape, ...] = ("steady", "ramp", "storm")
DEFAULT_DURATION_S = 60.0  # what ramp and storm timings are fractions of when --run-time is not given
DEVICE_PREFIX = "lt"


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """Who posts what, who follows what, and how the load changes over time."""

    stream_url: str
    shape: Shape
    devices: int
    dashboards: int
    sites: int
    site_prefix: str
    patterns_per_dashboard: int
    dashboard_rate: float | None
    device_rate: float
    batch_size: int
    batch_share: float
    run_time_s: float | None
    ramp_s: float
    storm_at_s: float
    storm_pause_ms: int | None
    summary_json: str

    @classmethod
    def from_options(cls, options: argparse.Namespace) -> LoadConfig:
        """From Locust's parsed options; the stream URL falls back to ``--host`` (one Ingress for both)."""
        run_time_s = float(options.run_time) if getattr(options, "run_time", None) else None
        span_s = run_time_s or DEFAULT_DURATION_S
        return cls(
            stream_url=(options.stream_url or options.host or "").rstrip("/"),
            shape=cast(Shape, options.shape),
            devices=int(options.devices),
            dashboards=int(options.dashboards),
            sites=int(options.sites),
            site_prefix=str(options.site_prefix),
            patterns_per_dashboard=min(int(options.patterns_per_dashboard), int(options.sites)),
            dashboard_rate=float(options.dashboard_rate) if float(options.dashboard_rate) > 0 else None,
            device_rate=float(options.device_rate),
            batch_size=int(options.batch_size),
            batch_share=float(options.batch_share),
            run_time_s=run_time_s,
            ramp_s=float(options.ramp_s) if float(options.ramp_s) > 0 else 0.8 * span_s,
            storm_at_s=float(options.storm_at_s) if float(options.storm_at_s) > 0 else span_s / 2,
            storm_pause_ms=int(options.storm_pause_ms) if int(options.storm_pause_ms) >= 0 else None,
            summary_json=str(options.summary_json or ""),
        )

    @property
    def users(self) -> int:
        """Device and dashboard users together: what the shape asks Locust for."""
        return self.devices + self.dashboards

    def site(self, number: int) -> str:
        """The site of device or dashboard ``number`` (1-based): round-robin over the sites."""
        return f"{self.site_prefix}{(number - 1) % self.sites + 1}"

    def patterns(self, dashboard: int) -> list[str]:
        """Dashboard ``dashboard`` follows its own site and the next ones: ``site3.>``, ``site4.>``..."""
        return [f"{self.site(dashboard + offset)}.>" for offset in range(self.patterns_per_dashboard)]

    def readings_per_s_per_dashboard(self) -> float:
        """What one dashboard receives when every device is up: keep it under the server's rate limit."""
        devices_per_site = math.ceil(self.devices / self.sites)
        return devices_per_site * self.patterns_per_dashboard * self.device_rate


def positive_int(text: str) -> int:
    """An argparse type: a count of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite rate above 0."""
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text}")
    return value


def share(text: str) -> float:
    """An argparse type: a fraction from 0 to 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def add_arguments(parser: LocustArgumentParser) -> None:
    """Declare the options in Locust's parser (``LOCUST_<NAME>`` in the environment works too)."""

    def option(flag: str, **kwargs: Any) -> None:
        # Not in an argument group: only the parser's own add_argument knows include_in_web_ui.
        parser.add_argument(flag, env_var="LOCUST_" + flag.removeprefix("--").replace("-", "_").upper(), **kwargs)

    option("--stream-url", default="", help="Stream service base URL (default: --host, for one Ingress for both)")
    option("--shape", choices=SHAPES, default="steady", help="Load shape: steady, ramp or storm (default steady)")
    option("--devices", type=positive_int, default=20, help="Device users (default 20)")
    option("--dashboards", type=positive_int, default=10, help="Dashboard users, SSE subscribers (default 10)")
    option("--sites", type=positive_int, default=5, help="Sites the devices are spread over (default 5)")
    option("--site-prefix", default="site", help="Site names are <prefix>1, <prefix>2... (default site)")
    option("--patterns-per-dashboard", type=positive_int, default=1, help="Site patterns per dashboard (default 1)")
    option(
        "--dashboard-rate",
        type=float,
        default=0.0,
        help="Readings/s a dashboard asks for (&rate=); the server conflates the rest, seen as gaps (default 0: all)",
    )
    option("--device-rate", type=positive_float, default=1.0, help="Readings per second per device (default 1)")
    option("--batch-size", type=positive_int, default=10, help="Readings in a batched POST (default 10)")
    option("--batch-share", type=share, default=0.2, help="Share of POSTs that are batches, 0-1 (default 0.2)")
    option("--ramp-s", type=float, default=0.0, help="ramp: seconds to reach all users (default 0: 80%% of run time)")
    option("--storm-at-s", type=float, default=0.0, help="storm: when dashboards drop (default 0: mid-run)")
    option(
        "--storm-pause-ms",
        type=int,
        default=-1,
        help="storm: how long dashboards stay away (default -1: the server's retry: hint, as a browser)",
    )
    option("--summary-json", default="", include_in_web_ui=False, help="Also write the summary to this JSON file")
