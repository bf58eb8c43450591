"""The hub's own metrics: the live feed's upstream lag as of its last delivery."""

from __future__ import annotations

from core.jetstream import JetStreamLink
from core.settings import Settings
from stream.hub import Hub
from stream.metrics import StreamMetrics


async def test_upstream_pending_is_the_count_of_the_last_delivery() -> None:
    metrics = StreamMetrics()
    hub = Hub(JetStreamLink(Settings(subject_prefix="lag"), "stream"), metrics)
    for seq, pending in ((1, 7), (2, 6), (2, 9)):  # the last one a redelivery: its count is still the latest
        await hub._on_live(seq, "other.s.d.m", b"{}", pending)
    assert metrics.registry.get_sample_value("telemetry_stream_upstream_pending") == 9
