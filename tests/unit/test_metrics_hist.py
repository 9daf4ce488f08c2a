"""The batch histogram exposes what prometheus_client's Histogram would, series for series."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from api.cli import metrics_dir
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


def test_batch_histograms_of_two_processes_merge_into_one_histogram(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Multi-process mode: each process's buckets go to its own file; a scrape sums them."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    reference = CollectorRegistry()
    histogram = Histogram("x_seconds", "doc", buckets=LATENCY_BUCKETS, registry=reference)
    for pid, part in ((101, VALUES[:6]), (102, VALUES[6:])):
        value_class = values.MultiProcessValue(lambda pid=pid: pid)
        batch = BatchHistogram(
            "x_seconds", "doc", LATENCY_BUCKETS, CollectorRegistry(), value_class=value_class
        )
        batch.observe_many(part)
        for v in part:
            histogram.observe(v)
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=str(tmp_path))  # type: ignore[no-untyped-call]
    assert len(list(tmp_path.glob("histogram_*.db"))) == 2

    def without_sum(registry: CollectorRegistry) -> list[str]:
        return [line for line in exposition(registry) if "_sum" not in line]

    assert without_sum(merged) == without_sum(reference)
    assert merged.get_sample_value("x_seconds_sum") == pytest.approx(sum(VALUES))
    assert merged.get_sample_value("x_seconds_count") == len(VALUES)


def test_database_gauges_keep_an_action_at_zero_once_seen() -> None:
    m = Metrics()
    m.set_gauges({"a.s": 3, "b.s": 1}, 2)
    m.set_gauges({"b.s": 4}, 1)
    r = m.registry
    assert r.get_sample_value("cairn_queue_depth", {"action": "a.s"}) == 0
    assert r.get_sample_value("cairn_queue_depth", {"action": "b.s"}) == 4
    assert r.get_sample_value("cairn_workers_active") == 1
    assert b'cairn_queue_depth{action="b.s"} 4.0' in m.render()


def test_metrics_dir_is_fresh_and_removed_unless_the_operator_set_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with metrics_dir() as made:
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == made
        assert Path(made).is_dir() and not any(Path(made).iterdir())
        (Path(made) / "counter_1.db").write_bytes(b"x")
    assert not Path(made).exists() and "PROMETHEUS_MULTIPROC_DIR" not in os.environ

    given = tmp_path / "given"
    given.mkdir()
    (given / "counter_7.db").write_bytes(b"stale")  # an earlier server's: would add to ours
    (given / "notes.txt").write_text("kept")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))
    with metrics_dir() as used:
        assert used == str(given)
        assert sorted(p.name for p in given.iterdir()) == ["notes.txt"]
    assert given.is_dir() and os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(given)
