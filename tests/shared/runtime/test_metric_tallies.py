"""Tallies (shared/runtime/metrics.py) add up to what direct inc()/observe() calls would have."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.runtime.metrics import HistogramTally, Tally, flush_tallies


def test_tally_adds_its_count_when_flushed() -> None:
    registry = CollectorRegistry()
    counter = Counter("t_events_total", "test", ["kind"], registry=registry)
    tally = Tally(counter.labels("a"))
    tally.n += 3
    tally.n += 4
    assert registry.get_sample_value("t_events_total", {"kind": "a"}) == 0
    flush_tallies()
    assert registry.get_sample_value("t_events_total", {"kind": "a"}) == 7
    flush_tallies()  # nothing new: nothing added twice
    assert registry.get_sample_value("t_events_total", {"kind": "a"}) == 7


def test_histogram_tally_buckets_like_observe() -> None:
    registry = CollectorRegistry()
    buckets = (0.001, 0.01, 0.1, 1.0)
    direct = Histogram("t_direct_seconds", "test", buckets=buckets, registry=registry)
    tallied = Histogram("t_tallied_seconds", "test", buckets=buckets, registry=registry)
    tally = HistogramTally(tallied)
    values = [0.0, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0, 0.0005]
    for v in values:
        direct.observe(v)
        tally.observe(v)
    flush_tallies()
    for le in ("0.001", "0.01", "0.1", "1.0", "+Inf"):
        assert registry.get_sample_value("t_tallied_seconds_bucket", {"le": le}) == (
            registry.get_sample_value("t_direct_seconds_bucket", {"le": le})
        ), le
    assert registry.get_sample_value("t_tallied_seconds_count") == len(values)
    assert registry.get_sample_value("t_tallied_seconds_sum") == sum(values)
