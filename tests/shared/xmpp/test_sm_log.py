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


def test_an_entry_without_the_acked_field_reads_as_zero() -> None:
    entry = sm.LogEntry(b"2 1 - 0 0\n<m/>")  # written before entries carried it
    assert (entry.count, entry.acked, entry.stanza) == (2, 0, b"<m/>")


def test_unacked_from_log_starts_after_the_last_acknowledgement_logged() -> None:
    """XEP-0198 §5, a session never resumed: what its client had not acknowledged (the
    last <a/> its log knows of) goes on, in order, and a drained copy only once."""
    entries = _entries(
        sm.log_entry(0, 0, "", 0, b"", base=True),
        sm.log_entry(1, 0, "cm-a/s1", 10, b"<m1/>"),
        sm.log_entry(2, 0, "cm-a/s1", 11, b"<m2/>", acked=0),
        sm.ack_mark(0, 1),
        sm.log_entry(3, 0, "cm-a/s1", 12, b"<m3/>", acked=1),
        sm.log_entry(0, 0, "cm-a/s1", 12, b"<m3/>"),  # drained copy of a counted one
        sm.log_entry(0, 0, "cm-a/s1", 13, b"<m4/>"),  # drained, never written
        sm.ack_mark(0, 2),
    )
    assert list(sm.unacked_from_log(entries).queue) == [b"<m3/>", b"<m4/>"]


def test_unacked_from_log_after_a_base_counts_from_the_base() -> None:
    entries = _entries(
        sm.log_entry(7, 0, "", 0, b"<old/>", acked=6),
        sm.log_entry(0, 0, "", 0, b"", base=True, acked=9),  # taken over with 9 acked
        sm.log_entry(10, 0, "", 0, b"<m10/>", acked=9),
        sm.log_entry(11, 0, "", 0, b"<m11/>", acked=9),
    )
    assert list(sm.unacked_from_log(entries).queue) == [b"<m10/>", b"<m11/>"]
