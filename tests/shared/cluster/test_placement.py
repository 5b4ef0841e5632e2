"""Load-aware placement with no I/O (shared/cluster/placement.py): the load record, being
full with hysteresis, which peers a new stream may be sent to (RFC 6120 §4.9.3.19)."""

from __future__ import annotations

import random

from shared.cluster import placement
from shared.cluster.placement import Fullness, Load, Seen


def _load(connections: int = 10, capacity: int = 100, address: str = "10.0.0.2:5224",
          full: bool = False) -> Load:
    return Load(address=address, connections=connections, capacity=capacity, high_water=0.9,
                cpu=0.25, full=full, ttl_s=15)


def test_the_load_record_goes_through_redis_as_it_was_written() -> None:
    load = _load()
    assert Load.decode(load.encode()) == load
    assert Load.decode(b"not json") is None
    assert Load.decode(b'{"a": 1}') is None
    assert Load.decode(b"[1, 2]") is None


def test_the_age_of_a_record_is_its_ttl_minus_what_is_left_of_it() -> None:
    raw = _load().encode()
    got = placement.seen("cm-2", raw, 11_000)
    assert got is not None and got.age_s == 4.0 and got.cm_id == "cm-2"
    assert placement.seen("cm-2", None, -2) is None  # expired: gone
    assert placement.seen("cm-2", raw, -1) is None  # no expiry: not a heartbeat's
    assert placement.seen("cm-2", b"junk", 5000) is None


def test_full_from_the_high_water_mark_until_below_the_low_water_mark() -> None:
    f = Fullness(100, 0.9, 0.8)
    assert [f.update(n) for n in (89, 90, 85, 80, 79, 89)] == [
        False, True, True, True, False, False]
    assert not Fullness(0, 0.9, 0.8).update(10**9)  # capacity 0: unlimited, never full
    tiny = Fullness(4, 0.5, 0.25)
    assert [tiny.update(n) for n in (1, 2, 3, 1, 0)] == [False, True, True, True, False]


def test_targets_are_fresh_others_with_a_direct_address_and_room() -> None:
    stale_s = placement.stale_after(5.0)
    assert stale_s == 11.0
    peers = [
        Seen("cm-1", _load(), 1.0),  # ourselves
        Seen("cm-2", _load(), 1.0),  # a target
        Seen("cm-3", _load(), 12.0),  # stale: two heartbeats missed
        Seen("cm-4", _load(address=""), 1.0),  # no direct addressing
        Seen("cm-5", _load(full=True), 1.0),  # full by its own account
        Seen("cm-6", _load(connections=90), 1.0),  # full by its figures (90 of 100 at 0.9)
        Seen("cm-7", _load(capacity=0, connections=10**6), 1.0),  # unlimited
    ]
    assert [p.cm_id for p in placement.targets(peers, "cm-1", stale_s)] == ["cm-2", "cm-7"]
    # read 10.5 s ago: what was 1 s old then is stale now
    assert placement.targets(peers, "cm-1", stale_s, waited_s=10.5) == []


def test_choose_draws_by_headroom_and_none_without_candidates() -> None:
    assert placement.choose([]) is None
    roomy = Seen("cm-2", _load(connections=0), 0.0)  # 90 free
    tight = Seen("cm-3", _load(connections=89), 0.0)  # 1 free
    rng = random.Random(7)
    picks = [placement.choose([roomy, tight], rng) for _ in range(200)]
    assert picks.count(roomy) >= 180


def test_a_bare_public_host_gets_the_direct_port() -> None:
    assert placement.with_port("cm-3.example.org", 5224) == "cm-3.example.org:5224"
    assert placement.with_port("[2001:db8::1]", 5224) == "[2001:db8::1]:5224"
    assert placement.with_port("192.0.2.7:15224", 5224) == "192.0.2.7:15224"
    assert placement.with_port("", 5224) == ""


def test_targets_drawn_at_a_new_stream_are_checked_for_staleness_then() -> None:
    stale_s = placement.stale_after(1.0)  # 3 s
    fresh = Seen("cm-2", _load(), 0.5)
    older = Seen("cm-3", _load(), 2.5)
    ready = placement.Targets([fresh, older, Seen("cm-1", _load(), 0.0)], "cm-1", stale_s,
                              read_at=100.0)
    assert len(ready) == 2
    rng = random.Random(1)
    assert {ready.draw(100.0, rng) for _ in range(50)} == {fresh, older}
    # a second later cm-3's record is 3.5 s old: only cm-2 is drawn, whatever the dice say
    assert {ready.draw(101.0, rng) for _ in range(50)} == {fresh}
    assert ready.draw(103.0, rng) is None  # both stale: none
    assert placement.Targets([], "cm-1", stale_s, 0.0).draw(0.0) is None
