"""Percentile, summary and series math of the load tool."""

from __future__ import annotations

import math

import pytest

from loadtest import stats
from loadtest.scenarios import passed, ramp_rates
from loadtest.users import ring_contacts


def test_nearest_rank_percentiles() -> None:
    values = list(range(1, 101))  # 1..100
    assert stats.percentile(values, 50) == 50
    assert stats.percentile(values, 95) == 95
    assert stats.percentile(values, 99) == 99
    assert stats.percentile(values, 100) == 100
    assert stats.percentile(values, 0) == 1
    assert stats.percentile([7.0], 99) == 7.0
    assert stats.percentile([1, 2, 3, 4], 50) == 2
    assert math.isnan(stats.percentile([], 50))
    with pytest.raises(ValueError):
        stats.percentile(values, 101)


def test_summary() -> None:
    s = stats.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.count, s.mean, s.p50, s.max) == (5, 3.0, 3.0, 5.0)
    assert s.p99 == 5.0
    empty = stats.summarize([])
    assert empty.count == 0 and math.isnan(empty.p50)


def test_series_buckets_per_second_with_gaps() -> None:
    samples = [(0.1, 1.0), (0.5, 3.0), (2.2, 10.0)]
    buckets = stats.series(samples, 0.0)
    assert [b.delivered for b in buckets] == [2, 0, 1]
    assert [b.t_s for b in buckets] == [1.0, 2.0, 3.0]
    assert buckets[0].p50 == 1.0 and buckets[0].p99 == 3.0
    assert math.isnan(buckets[1].p50)
    assert stats.series([], 0.0) == []


def test_rates_and_ratios() -> None:
    assert stats.rate(100, 2.0) == 50.0
    assert stats.rate(100, 0.0) == 0.0
    assert stats.per(3.0, 2.0) == 1.5
    assert math.isnan(stats.per(1.0, 0))


def test_ramp_rates_grow_geometrically_and_stop_at_the_ceiling() -> None:
    assert ramp_rates(100, 2, 10, 1000) == [100, 200, 400, 800]
    assert ramp_rates(100, 1.5, 3, 10_000) == [100, 150, 225]
    with pytest.raises(ValueError):
        ramp_rates(100, 1.0, 3, 1000)


def _step(p99: float, loss_ratio: float = 0.0, delivered: float = 100.0) -> dict[str, object]:
    return {"latency_ms": {"p99": p99}, "loss_ratio": loss_ratio,
            "delivered_per_s": delivered, "target_rate": 100.0}


def test_a_ramp_step_passes_only_within_latency_loss_and_rate() -> None:
    assert passed(_step(10.0), 50.0)
    assert not passed(_step(60.0), 50.0)
    assert not passed(_step(10.0, loss_ratio=0.05), 50.0)
    assert not passed(_step(10.0, delivered=50.0), 50.0)
    assert not passed(_step(math.nan), 50.0)


def test_ring_rosters_are_mutual() -> None:
    for n, r in ((10, 4), (12, 5), (6, 1)):
        contacts = ring_contacts(n, r)
        assert all(len(c) == r for c in contacts)
        assert all(i not in c for i, c in enumerate(contacts))
        assert all(i in contacts[j] for i, c in enumerate(contacts) for j in c)
    with pytest.raises(ValueError):
        ring_contacts(3, 3)
