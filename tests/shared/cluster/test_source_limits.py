"""Limits per source address (RFC 6120 §13.12): the rate of new connections."""

from __future__ import annotations

import pytest

from shared.cluster import source_limits
from shared.cluster.source_limits import ConnectionRate


def test_rfc6120_13_12_new_connections_per_source_per_minute() -> None:
    rate = ConnectionRate(3)
    assert [rate.admit("10.0.0.1", 0.0) for _ in range(4)] == [True, True, True, False]
    assert rate.admit("10.0.0.2", 0.0)  # another source has its own bucket
    assert not rate.admit("10.0.0.1", 10.0)  # 3 a minute: one token after 20 s
    assert rate.admit("10.0.0.1", 21.0)
    assert not rate.admit("10.0.0.1", 21.0)


def test_rfc6120_13_12_zero_means_unlimited() -> None:
    rate = ConnectionRate(0)
    assert all(rate.admit("10.0.0.1", 0.0) for _ in range(1000))


def test_tracked_sources_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source_limits, "MAX_TRACKED", 10)
    rate = ConnectionRate(60)
    for i in range(100):
        assert rate.admit(f"10.0.1.{i}", float(i) / 100)
    assert len(rate._buckets) <= 10
