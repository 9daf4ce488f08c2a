"""The batch histogram exposes what prometheus_client's Histogram would, series for series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from api.metrics import LATENCY_BUCKETS, BatchHistogram, Metrics
from db.types import Effects

VALUES = [0.0, 0.0004, 0.001, 0.0011, 0.0025, 0.3, 1.0, 2.5, 7, 60, 299.9, 1800, 1800.5, 1e9, -1]


def exposition(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if "_created" not in line)


def test_same_series_as_prometheus_histogram_including_values_on_a_bound() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("x_seconds", "doc", LATENCY_BUCKETS, ours)
    reference = Histogram("x_seconds", "doc", buckets=LATENCY_BUCKETS, registry=theirs)
    batch.observe_many(VALUES[:5])
    for v in VALUES[5:]:
        batch.observe(v)
    for v in VALUES:
        reference.observe(v)
    assert exposition(ours) == exposition(theirs)
    assert ours.get_sample_value("x_seconds_count") == len(VALUES)
    assert ours.get_sample_value("x_seconds_bucket", {"le": "0.001"}) == 4


def test_metrics_record_a_batch_of_latencies_and_durations() -> None:
    m = Metrics()
    effects = Effects()
    effects.queue_latencies.extend([0.002, 0.02, 2.0])
    effects.step_durations.extend([0.5])
    m.record(effects)
    m.record(Effects())  # nothing to add
    r = m.registry
    assert r.get_sample_value("cairn_queue_latency_seconds_count") == 3
    assert r.get_sample_value("cairn_queue_latency_seconds_sum") == 2.022
    assert r.get_sample_value("cairn_queue_latency_seconds_bucket", {"le": "0.025"}) == 2
    assert r.get_sample_value("cairn_step_duration_seconds_bucket", {"le": "+Inf"}) == 1
