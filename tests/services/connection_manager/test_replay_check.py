"""The connection manager's check that drops a message a partition take-over replayed
(services/connection_manager/service.py `_replayed`): a copy is a message from the same
sending session that is not newer than the last one delivered."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from services.connection_manager.service import MAX_SEEN, _replayed
from shared.bus.envelope import Envelope, Kind


def _msg(origin: str, ts_us: int) -> Envelope:
    return Envelope(Kind.MESSAGE, to="b@localhost/r", from_="a@localhost/s", origin=origin,
                    ts_us=ts_us)


def test_a_replay_is_dropped_and_other_senders_pass() -> None:
    conn: Any = SimpleNamespace(seen=None)
    assert [_replayed(conn, _msg("cm-1/a", t)) for t in (10, 11, 12)] == [False] * 3
    # the take-over replays 11 and 12 (handled, not acked), then 13 is new
    assert [_replayed(conn, _msg("cm-1/a", t)) for t in (11, 12, 13)] == [True, True, False]
    assert not _replayed(conn, _msg("cm-1/b", 5))  # another session's clock
    assert not _replayed(conn, _msg("router", 1))  # a service's own stanza: never checked
    assert not _replayed(conn, _msg("router", 1))


def test_the_senders_remembered_are_bounded() -> None:
    conn: Any = SimpleNamespace(seen=None)
    for i in range(MAX_SEEN * 2):
        _replayed(conn, _msg(f"cm-1/{i}", 1))
    assert len(conn.seen) == MAX_SEEN
