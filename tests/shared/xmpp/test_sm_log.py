"""The XEP-0198 session log (durable deliveries): a queue rebuilt for a client's 'h' (§5)."""

from __future__ import annotations

from shared.xmpp import sm


def _entries(*raw: bytes) -> list[sm.LogEntry]:
    return [sm.LogEntry(r) for r in raw]


def test_counted_entries_beyond_h_then_loose_ones_not_copies_in_order() -> None:
    entries = _entries(
        sm.log_entry(0, 0, "", 0, b"", base=True),
        sm.log_entry(1, 3, "cm-a/s1", 10, b"<m1/>"),
        sm.log_entry(2, 3, "cm-a/s1", 11, b"<m2/>"),
        sm.log_entry(3, 4, "", 0, b"<iq3/>"),
        sm.log_entry(0, 0, "cm-a/s1", 11, b"<m2/>"),  # drained copy of a counted one
        sm.log_entry(0, 0, "cm-a/s1", 12, b"<m4/>"),
    )
    queue = sm.queue_from_log("id", 60, entries, h=1)
    assert list(queue.queue) == [b"<m2/>", b"<iq3/>", b"<m4/>"]
    assert (queue.acked, queue.sent, queue.handled) == (1, 4, 4)
    assert queue.check(1) is None and queue.check(5) is not None  # §4: 5 is too high


def test_a_base_supersedes_what_came_before() -> None:
    entries = _entries(
        sm.log_entry(1, 0, "", 0, b"<old/>"),
        sm.log_entry(0, 0, "x/y", 5, b"<loose-old/>"),
        sm.log_entry(0, 2, "", 0, b"", base=True),
        sm.log_entry(1, 2, "", 0, b"<new/>"),
    )
    assert list(sm.queue_from_log("id", 60, entries, h=0).queue) == [b"<new/>"]


def test_handled_is_the_facts_when_they_know_more() -> None:
    entries = _entries(sm.log_entry(1, 2, "", 0, b"<a/>"))
    assert sm.queue_from_log("id", 60, entries, h=1, handled=5).handled == 5
