"""Limits per source address (RFC 6120 §13.12): the one token bucket, open and unauthenticated
connections per source, the rate of new connections, CIDR lists."""

from __future__ import annotations

import pytest

from shared.cluster import source_limits
from shared.cluster.source_limits import (
    ConnectionRate,
    ConnectionsPerSource,
    Networks,
    SlotsPerSource,
    TokenBucket,
    UnauthenticatedPerSource,
    source_key,
)


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


def test_bucket_try_take_takes_only_what_is_there() -> None:
    bucket = TokenBucket(rate=1, burst=2, now=0.0)
    assert [bucket.try_take(1, 0.0) for _ in range(3)] == [True, True, False]
    assert not bucket.full(0.5)
    assert bucket.try_take(1, 1.0)
    assert bucket.full(3.0)


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


def test_rfc6120_13_12_unauthenticated_past_the_limit_evicts_the_oldest() -> None:
    unauth: UnauthenticatedPerSource[str] = UnauthenticatedPerSource(3)
    assert [unauth.admit("10.0.0.1", c) for c in "abc"] == [None, None, None]
    assert unauth.admit("10.0.0.1", "d") == "a"  # the newcomer stays, the oldest goes
    assert unauth.admit("10.0.0.2", "x") is None  # another source is not affected
    unauth.release("10.0.0.1", "b")  # authenticated: no longer counted
    assert unauth.admit("10.0.0.1", "e") is None
    assert unauth.admit("10.0.0.1", "f") == "c"
    assert unauth.count("10.0.0.1") == 3
    for c in "def":
        unauth.release("10.0.0.1", c)
    unauth.release("10.0.0.1", "never counted")
    assert unauth.count("10.0.0.1") == 0 and "10.0.0.1" not in unauth._open


def test_trusted_networks_have_their_own_unauthenticated_limit() -> None:
    unauth: UnauthenticatedPerSource[int] = UnauthenticatedPerSource(
        1, Networks("10.0.0.0/8"), trusted_limit=0
    )
    assert all(unauth.admit("10.1.2.3", i) is None for i in range(100))  # 0: unlimited
    assert unauth.admit("192.0.2.1", 1) is None
    assert unauth.admit("192.0.2.1", 2) == 1


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


def test_networks_match_addresses_source_keys_and_mapped_ipv4() -> None:
    nets = Networks("10.0.0.0/8, 2001:db8::/32,192.0.2.7")
    assert "10.200.0.1" in nets and "192.0.2.7" in nets and "::ffff:10.0.0.1" in nets
    assert "192.0.2.8" not in nets and "11.0.0.1" not in nets and "junk" not in nets
    assert "2001:db8:1:2::/64" in nets and "2001:db9::/64" not in nets
    assert not Networks("") and "10.0.0.1" not in Networks(" ")
    with pytest.raises(ValueError):
        Networks("10.0.0.0/33")


def test_slots_per_source_queue_the_others_oldest_first() -> None:
    slots: SlotsPerSource[str] = SlotsPerSource(2)
    woken: list[str] = []
    assert slots.acquire("s", "a", lambda: woken.append("a"))
    assert slots.acquire("s", "b", lambda: woken.append("b"))
    assert not slots.acquire("s", "c", lambda: woken.append("c"))
    assert not slots.acquire("s", "d", lambda: woken.append("d"))
    assert not slots.acquire("s", "e", lambda: woken.append("e"))
    assert slots.acquire("t", "x", lambda: None)  # another source has its own slots
    slots.cancel("s", "d")  # gave up waiting
    slots.release("s")
    assert woken == ["c"] and slots.held("s") == 2
    slots.release("s")
    assert woken == ["c", "e"] and slots.waiting("s") == 0
    slots.release("s")
    slots.release("s")
    assert slots.held("s") == 0 and "s" not in slots._held
    unlimited: SlotsPerSource[int] = SlotsPerSource(0)
    assert all(unlimited.acquire("s", i, lambda: None) for i in range(100))
