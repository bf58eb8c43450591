"""Admission: whether a new stream may open (the caps, the connect rate, a drain), and the slots streams hold."""

from __future__ import annotations

import time
from collections import Counter

from core.settings import Settings
from stream.limits import TokenBucket
from stream.metrics import StreamMetrics


class Admission:
    """The process's and each client's connection slots, taken at admission and given back when a stream ends.

    A stream holds its slots from the moment it is admitted, before its resume plan's JetStream round
    trip: requests that arrive together cannot all pass the caps before any of them is counted.
    ``telemetry_stream_connections_active`` shows the slots taken.
    """

    def __init__(self, settings: Settings, metrics: StreamMetrics) -> None:
        self._max_connections = settings.max_connections
        self._max_per_client = settings.max_connections_per_client
        self._connects = TokenBucket(settings.max_connects_per_s)
        self._metrics = metrics
        self.per_client: Counter[str] = Counter()
        self.admitted = 0
        self.draining = False

    def admit(self, client: str) -> str | None:
        """Take a slot for a stream of ``client``; or, counted, why not (a cap, the connect rate, a drain)."""
        reason = self._refusal(client)
        if reason is not None:
            self._metrics.refused.labels(reason=reason).inc()
            return reason
        self.admitted += 1
        self.per_client[client] += 1
        self._metrics.connections_active.set(self.admitted)
        return None

    def release(self, client: str) -> None:
        """Give back the slot of a stream that ended, or never started (a failed plan, a 503)."""
        self.admitted -= 1
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]
        self._metrics.connections_active.set(self.admitted)

    def drain(self) -> bool:
        """Refuse every new stream from now on (shutting down); False if that was so already."""
        if self.draining:
            return False
        self.draining = True
        return True

    def _refusal(self, client: str) -> str | None:
        if self.draining:
            return "shutdown"
        if self.admitted >= self._max_connections:
            return "too_many_connections"
        if self.per_client[client] >= self._max_per_client:
            return "too_many_connections_from_client"
        if not self._connects.take(time.monotonic()):
            return "connect_rate"
        return None
