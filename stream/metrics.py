"""Stream service metrics, in a registry of the app's own; labels stay bounded (no topic labels)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from core.tallies import Tally
from stream.latency import EndToEndLatency

STARTS = ("live", "resume", "since", "snapshot")  # how a stream starts: stream/sse.py's how_it_starts
# The reasons a stream is ended, refused or reset: each series exists from the start, at 0, for rates and alerts.
ENDED_REASONS = (
    "max_events",
    "max_lifetime",
    "slow_consumer",
    "memory_budget",
    "shutdown",
    "replay_failed",
    "stream_recreated",
    "token_expired",
    "transport_closed",
    "write_failed",
)
REFUSED_REASONS = (
    "too_many_connections",
    "too_many_connections_from_client",
    "connect_rate",
    "shutdown",
    "not_ready",
    "unavailable",
)
RESET_REASONS = ("unknown_id", "history_expired", "replay_limit", "stream_recreated")


class HubCounters(Collector):
    """Counters kept as plain integers (they change per connection per event) and read at scrape."""

    def __init__(self, read: Callable[[], tuple[int, int, int, int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        events_sent, keepalives, conflated, bytes_sent, replayed = self._read()
        yield CounterMetricFamily(
            "telemetry_stream_events_sent", "Reading events written to clients.", value=events_sent
        )
        yield CounterMetricFamily("telemetry_stream_keepalives", "Keep-alive comments written.", value=keepalives)
        yield CounterMetricFamily(
            "telemetry_stream_bytes_sent",
            "Body bytes written to clients (events, keep-alives, control frames; HTTP chunk framing where the stream "
            "writes to the socket itself).",
            value=bytes_sent,
        )
        yield CounterMetricFamily(
            "telemetry_stream_replayed_events",
            "Reading events from history (a resume, since=, snapshot=) written to clients.",
            value=replayed,
        )
        yield CounterMetricFamily(
            "telemetry_stream_conflated_readings",
            "Readings replaced by a newer one of the same topic before they were sent (rate limit, slow client).",
            value=conflated,
        )


def labelled(counter: Counter, reasons: tuple[str, ...]) -> Counter:
    """``counter`` with a series for each of ``reasons`` (its only label) from the start."""
    for reason in reasons:
        counter.labels(reason=reason)
    return counter


class StreamMetrics:
    """What an operator watches: connections, events out, readings in, replays and resets."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections_active = Gauge(
            "telemetry_stream_connections_active",
            "Open SSE streams, counted against the caps from admission until they end.",
            registry=self.registry,
        )
        self.connections = Counter("telemetry_stream_connections", "SSE connections accepted.", registry=self.registry)
        starts = Counter(
            "telemetry_stream_starts",
            "Streams served, by how they start: live, resume (Last-Event-ID), since (a time), snapshot.",
            ["start"],
            registry=self.registry,
        )
        self.starts = {start: starts.labels(start=start) for start in STARTS}
        self.upstream_messages = Counter(
            "telemetry_stream_upstream_messages",
            "Readings received from the live JetStream feed.",
            registry=self.registry,
        )
        self.live_feed_connected = Gauge(
            "telemetry_stream_live_feed_connected",
            "1 while the live feed's own NATS connection and consumer deliver (or none is needed and NATS is "
            "connected), 0 before it starts and while it is made again.",
            registry=self.registry,
        )
        self.live_feed_resets = Counter(
            "telemetry_stream_live_feed_resets",
            "Times the live feed's consumer was made again (a gap, missed heartbeats, a lost connection, a reconnect).",
            registry=self.registry,
        )
        self.live_feed_filters = Gauge(
            "telemetry_stream_live_feed_filters",
            "Filter subjects of the live feed's consumer: what the process's streams follow (0: none is open).",
            registry=self.registry,
        )
        self.live_feed_filter_changes = Counter(
            "telemetry_stream_live_feed_filter_changes",
            "Times the live feed's consumer was made again for other filters (a stream following more, or fewer "
            "streams), or closed as the last stream ended.",
            registry=self.registry,
        )
        self.upstream_pending = Gauge(
            "telemetry_stream_upstream_pending",
            "Readings JetStream still holds for the live feed's consumer, as of its last delivery (upstream lag).",
            registry=self.registry,
        )
        self.resets = labelled(
            Counter(
                "telemetry_stream_resets",
                "Reset events sent (requested id no longer or never stored, or the stream created anew).",
                ["reason"],
                registry=self.registry,
            ),
            RESET_REASONS,
        )
        self.conflated = Tally()
        self.bytes_sent = Tally()  # body bytes written to clients: one integer add per write (Connection._written)
        self.replayed = Tally()  # history readings written to clients, per write too
        self.end_to_end = EndToEndLatency()
        self.registry.register(self.end_to_end)
        self.ended = labelled(
            Counter(
                "telemetry_stream_ended_connections",
                "Streams the server ended, by reason.",
                ["reason"],
                registry=self.registry,
            ),
            ENDED_REASONS,
        )
        self.refused = labelled(
            Counter(
                "telemetry_stream_refused_connections",
                "Streams refused by a cap, a drain, or as not servable yet (not_ready, unavailable), by reason.",
                ["reason"],
                registry=self.registry,
            ),
            REFUSED_REASONS,
        )
        self.pending_bytes = Gauge(
            "telemetry_stream_pending_bytes",
            "Bytes waiting for clients (queued, being written, in transports, conflated), under max_pending_bytes.",
            registry=self.registry,
        )
        self.pending_bytes_limit = Gauge(
            "telemetry_stream_pending_bytes_limit",
            "The budget telemetry_stream_pending_bytes is held under (TELEMETRY_MAX_PENDING_BYTES).",
            registry=self.registry,
        )

    def watch(self, read: Callable[[], tuple[int, int]]) -> None:
        """Expose the hub's own counters (events sent, keep-alives) and the connections' tallies on this registry."""
        self.registry.register(
            HubCounters(lambda: (*read(), self.conflated.count, self.bytes_sent.count, self.replayed.count))
        )
