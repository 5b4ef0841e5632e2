"""Token buckets and per-source counts of the connection manager (RFC 6120 §13.12)."""

from __future__ import annotations

import pytest

from services.connection_manager.limits import ConnectionsPerSource, TokenBucket, source_key


def test_bucket_allows_the_burst_then_asks_to_wait_for_the_debt() -> None:
    bucket = TokenBucket(rate=1000, burst=4000, now=0.0)
    assert bucket.take(4000, 0.0) == 0.0
    assert bucket.take(500, 0.0) == pytest.approx(0.5)
    # half a second later the debt is paid
    assert bucket.take(0, 0.5) == 0.0
    assert bucket.take(1000, 1.5) == 0.0


def test_bucket_refills_no_higher_than_the_burst() -> None:
    bucket = TokenBucket(rate=10, burst=20, now=0.0)
    assert bucket.take(0, 1000.0) == 0.0
    assert bucket.take(30, 1000.0) == pytest.approx(1.0)


def test_bucket_needs_a_positive_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0.0)


def test_source_key_groups_an_ipv6_64_and_unmaps_ipv4() -> None:
    assert source_key("127.0.0.1") == "127.0.0.1"
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:bbbb::9")
    assert source_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert source_key("not an address") == "not an address"


def test_connections_per_source_admits_up_to_the_limit_and_releases() -> None:
    counts = ConnectionsPerSource(2)
    assert counts.admit("a") and counts.admit("a")
    assert not counts.admit("a")
    assert counts.admit("b")
    counts.release("a")
    assert counts.admit("a")
    counts.release("a")
    counts.release("a")
    assert counts.count("a") == 0


def test_zero_means_unlimited() -> None:
    counts = ConnectionsPerSource(0)
    assert all(counts.admit("a") for _ in range(1000))
