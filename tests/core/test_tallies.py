"""The tallied metrics are exposed exactly as prometheus_client's own would be after the same changes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from core.tallies import TalliedCounter, TalliedHistogram

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def exposed(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines, without the ``_created`` series prometheus_client adds (no dashboard reads them)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False) | st.sampled_from(BUCKETS), max_size=50))
def test_a_tallied_histogram_is_exposed_as_prometheus_client_s(values: list[float]) -> None:
    # A value on a bound counts within that bucket: the bounds themselves are drawn too.
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    histogram = Histogram("latency_seconds", "How long.", buckets=BUCKETS, registry=theirs)
    tallied = TalliedHistogram("latency_seconds", "How long.", BUCKETS, ours)
    for value in values:
        histogram.observe(value)
        tallied.observe(value)
    assert exposed(ours) == exposed(theirs)


def test_a_value_observed_several_times_at_once_counts_as_many() -> None:
    once, at_once = CollectorRegistry(), CollectorRegistry()
    single = TalliedHistogram("age_seconds", "How old.", BUCKETS, once)
    for _ in range(3):
        single.observe(0.02)
    TalliedHistogram("age_seconds", "How old.", BUCKETS, at_once).observe(0.02, 3)
    assert exposed(at_once) == exposed(once)


def test_tallied_counters_are_exposed_as_prometheus_client_s_with_and_without_a_label() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    answers = Counter("answers", "Answers by status.", ["status"], registry=theirs)
    received = Counter("received", "Readings received.", registry=theirs)
    tallied_answers = TalliedCounter("answers", "Answers by status.", ours, "status")
    tallied_received = TalliedCounter("received", "Readings received.", ours)
    answers.labels(status="202").inc(3)
    answers.labels(status="422")  # a series made and never counted is exposed at 0
    received.inc(7)
    tallied_answers.series("202").count += 3
    tallied_answers.series("422")
    tallied_received.series("").count += 7
    assert exposed(ours) == exposed(theirs)
