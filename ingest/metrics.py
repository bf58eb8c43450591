"""Ingest metrics, in a registry of the app's own; labels stay bounded (no device or topic labels)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from core.auth import Forbidden, Unauthorized
from core.errors import ApiError, ServiceUnavailable
from core.tallies import TalliedCounter, TalliedHistogram, Tally
from ingest.body import BodyTooLarge, IncompleteBody, MalformedGzip, UnsupportedEncoding, UnsupportedMediaType
from ingest.parse import BatchTooLarge, InvalidReadings, MalformedJson
from ingest.ratelimit import RateLimited

PUBLISH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Why a request was refused: a bounded label, one value per error class (REFUSAL_OTHER for any other).
REFUSALS: dict[type[ApiError], str] = {
    Unauthorized: "unauthorized",
    MalformedJson: "malformed",
    MalformedGzip: "malformed",
    IncompleteBody: "incomplete",
    UnsupportedMediaType: "unsupported",
    UnsupportedEncoding: "unsupported",
    BodyTooLarge: "too_large",
    BatchTooLarge: "too_large",
    InvalidReadings: "invalid",
    Forbidden: "forbidden",
    RateLimited: "rate_limited",
    ServiceUnavailable: "not_stored",
}
REFUSAL_OTHER = "other"
REFUSAL_ERROR = "error"  # an unexpected exception, answered 500


class IngestMetrics:
    """What an operator watches: answers by status, readings received, stored, de-duplicated or rejected, and time
    to be acknowledged and to be answered."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # What changes on every request is tallied (core/tallies.py); the refusals' counters are prometheus_client's.
        self.requests = TalliedCounter(
            "telemetry_ingest_requests", "POST /v1/readings answers by HTTP status code.", self.registry, "status"
        )
        self._answers: dict[int, Tally] = {}
        readings = TalliedCounter(
            "telemetry_ingest_readings",
            "Readings acknowledged by JetStream: stored, or duplicate of a reading with the same id.",
            self.registry,
            "result",
        )
        # Both series exist from the start, and the hot path skips the label lookup.
        self.readings_stored = readings.series("stored")
        self.readings_duplicate = readings.series("duplicate")
        self.readings_received = TalliedCounter(
            "telemetry_ingest_readings_received",
            "Readings in requests that passed authentication and parsing (whatever became of them then).",
            self.registry,
        ).series("")
        rejected = Counter(
            "telemetry_ingest_readings_rejected",
            "Readings of parsed requests that were not stored: forbidden topic, device over its rate, or not "
            "acknowledged by JetStream (not_stored).",
            ["reason"],
            registry=self.registry,
        )
        self.readings_forbidden = rejected.labels(reason="forbidden")
        self.readings_rate_limited = rejected.labels(reason="rate_limited")
        self.readings_not_stored = rejected.labels(reason="not_stored")
        refused = Counter(
            "telemetry_ingest_requests_rejected",
            "Requests answered with an error, by reason (a request refused before parsing has no reading count).",
            ["reason"],
            registry=self.registry,
        )
        self._refusals = {error: refused.labels(reason=reason) for error, reason in REFUSALS.items()}
        self._refused_other = refused.labels(reason=REFUSAL_OTHER)
        self._refused_error = refused.labels(reason=REFUSAL_ERROR)
        self.publish_seconds = TalliedHistogram(
            "telemetry_ingest_publish_seconds",
            "Time from a request's first publish to its last acknowledgement, for requests stored in full.",
            PUBLISH_BUCKETS_S,
            self.registry,
        )
        self.request_seconds = TalliedHistogram(
            "telemetry_ingest_request_duration_seconds",
            "Time from a POST /v1/readings request's start to the end of its answer, whatever the answer.",
            REQUEST_BUCKETS_S,
            self.registry,
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
        tally = self._answers.get(status)
        if tally is None:  # a status code is one of a few: made on first use, then looked up in a dict
            tally = self._answers[status] = self.requests.series(str(status))
        tally.count += 1

    def refused(self, err: ApiError) -> None:
        """Count one request answered with ``err`` (its answer, and its reason)."""
        self.answered(err.status)
        self._refusals.get(type(err), self._refused_other).inc()

    def failed(self) -> None:
        """Count one request that ended in an unexpected exception (a 500)."""
        self.answered(500)
        self._refused_error.inc()

    def refused_at_gate(self, status: int) -> None:
        """Count one request the gate refused before the endpoint (its credentials: 401)."""
        self.answered(status)
        (self._refusals[Unauthorized] if status == Unauthorized.status else self._refused_other).inc()
