"""Ingest metrics, in a registry of the app's own; labels stay bounded (no device or topic labels)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PUBLISH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class IngestMetrics:
    """What an operator watches: answers by status, readings stored or de-duplicated, time to be acknowledged."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "telemetry_ingest_requests",
            "POST /v1/readings answers by HTTP status code.",
            ["status"],
            registry=self.registry,
        )
        readings = Counter(
            "telemetry_ingest_readings",
            "Readings acknowledged by JetStream: stored, or duplicate of a reading with the same id.",
            ["result"],
            registry=self.registry,
        )
        # Bound once: both series exist from the start, and the hot path skips the label lookup.
        self.readings_stored = readings.labels(result="stored")
        self.readings_duplicate = readings.labels(result="duplicate")
        self.publish_seconds = Histogram(
            "telemetry_ingest_publish_seconds",
            "Time from a request's first publish to its last acknowledgement, for requests stored in full.",
            buckets=PUBLISH_BUCKETS_S,
            registry=self.registry,
        )

    def track_devices(self, count: Callable[[], int]) -> None:
        """Expose how many devices the rate limiter tracks (bounded by ingest_rate_max_devices)."""
        gauge = Gauge(
            "telemetry_ingest_rate_tracked_devices",
            "Devices whose token bucket the per-device rate limit keeps now.",
            registry=self.registry,
        )
        gauge.set_function(lambda: float(count()))

    def answered(self, status: int) -> None:
        """Count one answer to POST /v1/readings."""
        self.requests.labels(status=str(status)).inc()
