"""The router's session cache stays exact under session events."""

from __future__ import annotations

from shared.router.cache import SessionCache
from shared.store.sessions import SessionRecord


def test_fetched_entries_are_served_until_invalidated() -> None:
    cache = SessionCache(10, 60)
    assert cache.get("u@d") is None
    cache.fetching(["u@d"])
    cache.fetched("u@d", True, {"r": SessionRecord("cm", "s")})
    entry = cache.get("u@d")
    assert entry is not None and entry.exists and "r" in entry.sessions
    cache.invalidate("u@d")
    assert cache.get("u@d") is None


def test_an_event_during_a_fetch_keeps_the_stale_answer_out() -> None:
    cache = SessionCache(10, 60)
    cache.fetching(["u@d"])
    cache.invalidate("u@d")  # the session changed while Redis was answering
    entry = cache.fetched("u@d", True, {})
    assert entry.exists  # the answer is used once, for the batch that asked
    assert cache.get("u@d") is None  # but not cached


def test_entries_expire_and_the_size_is_bounded() -> None:
    cache = SessionCache(2, 60)
    for name in ("a", "b", "c"):
        cache.fetching([name])
        cache.fetched(name, True, {})
    assert len(cache) == 2
    assert cache.get("a") is None
    entry = cache.get("c")
    assert entry is not None
    assert cache.get("c", now=entry.expires + 1) is None
