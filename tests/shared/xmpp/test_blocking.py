"""XEP-0191 §3: which JIDs a blocklist item covers."""

from __future__ import annotations

from shared.xmpp.blocking import is_blocked


def test_xep0191_bare_item_blocks_every_resource() -> None:
    assert is_blocked({"romeo@example.net"}, "romeo@example.net/orchard")
    assert is_blocked({"romeo@example.net"}, "romeo@example.net")


def test_xep0191_full_item_blocks_only_that_resource() -> None:
    assert is_blocked({"romeo@example.net/orchard"}, "romeo@example.net/orchard")
    assert not is_blocked({"romeo@example.net/orchard"}, "romeo@example.net/garden")
    assert not is_blocked({"romeo@example.net/orchard"}, "romeo@example.net")


def test_xep0191_domain_item_blocks_the_whole_domain() -> None:
    assert is_blocked({"example.net"}, "anyone@example.net/x")
    assert not is_blocked({"example.net"}, "anyone@example.org")


def test_empty_blocklist_blocks_nothing() -> None:
    assert not is_blocked(set(), "romeo@example.net")
    assert not is_blocked({"romeo@example.net"}, "")
