"""The room state machine (services/muc/room.py) without I/O: what one stanza produces."""

from __future__ import annotations

import pytest
from lxml import etree

from services.muc.forms import Config
from services.muc.room import Broadcast, Limits, Room, Send, enforce_nick
from shared.xmpp.errors import StanzaError

ROOM = "room@conference.example.com"
C = "jabber:client"
MUC = "http://jabber.org/protocol/muc"


def _el(xml: str) -> etree._Element:
    return etree.fromstring(xml.replace("<presence", f'<presence xmlns="{C}"', 1)
                            .replace("<message", f'<message xmlns="{C}"', 1))


def _room(**config: object) -> Room:
    room = Room(ROOM, Config(**config), b"k" * 32, affiliations={"owner@example.com": "owner"},
                limits=Limits(max_history=10))
    return room


def _join(room: Room, real: str, nick: str, x: str = "", cm: str = "cm-1") -> list:
    return room.handle("presence", "", real, nick,
                       _el(f"<presence><x xmlns='{MUC}'>{x}</x></presence>"), cm=cm, now=1000.0)


def test_presence_is_at_most_three_variants_whatever_the_room_size() -> None:
    room = _room()
    _join(room, "owner@example.com/a", "owner")
    for i in range(50):
        _join(room, f"u{i}@example.com/r", f"u{i}", cm=f"cm-{i % 3}")
    out = _join(room, "late@example.com/r", "late")
    broadcasts = [o for o in out if isinstance(o, Broadcast)]
    # semi-anonymous: the moderator sees the real JID, the 50 participants do not
    assert len(broadcasts) == 2
    [mod] = [b for b in broadcasts if b"jid=" in b.payload]
    assert [o.nick for o in mod.recipients] == ["owner"]
    assert sum(len(b.recipients) for b in broadcasts) == 51
    mine = [o for o in out if isinstance(o, Send) and b'code="110"' in o.payload]
    assert len(mine) == 1 and mine[0].cm == "cm-1"


def test_xep0045_7_2_14_history_maxstanzas_seconds_maxchars() -> None:
    room = _room()
    _join(room, "owner@example.com/a", "owner")
    for i in range(5):
        room.handle("message", "groupchat", "owner@example.com/a", None,
                    _el(f"<message type='groupchat'><body>m{i}</body></message>"),
                    now=1000.0 + i)
    def history(x: str) -> list[bytes]:
        out = _join(room, f"h{len(room.occupants)}@example.com/r", f"h{len(room.occupants)}", x)
        return [o.payload for o in out if isinstance(o, Send) and b"<body>" in o.payload]
    assert len(history("<history maxstanzas='2'/>")) == 2
    assert len(history("<history maxstanzas='0'/>")) == 0
    assert len(history("")) == 5
    assert len(history("<history maxchars='0'/>")) == 0
    one = history("<history maxstanzas='1'/>")[0]
    assert len(history(f"<history maxchars='{len(one.decode()) + 5}'/>")) == 1
    assert b"urn:xmpp:delay" in one and b"<body>m4</body>" in one


def test_rfc8266_nicknames() -> None:
    assert enforce_nick("  Alice  ") == "Alice"
    with pytest.raises(StanzaError):
        enforce_nick("\u0007bell")
    room = _room()
    _join(room, "owner@example.com/a", "Alice")
    [err] = _join(room, "other@example.com/r", "alice")  # compared case-mapped
    assert isinstance(err, Send) and b"<conflict " in err.payload


def test_rate_limit_per_occupant() -> None:
    room = Room(ROOM, Config(), b"k" * 32, affiliations={"owner@example.com": "owner"},
                limits=Limits(message_rate=1.0, message_burst=2))
    _join(room, "owner@example.com/a", "owner")
    msg = _el("<message type='groupchat'><body>x</body></message>")
    outs = [room.handle("message", "groupchat", "owner@example.com/a", None, msg, now=5.0)
            for _ in range(3)]
    assert isinstance(outs[0][0], Broadcast) and isinstance(outs[1][0], Broadcast)
    assert b"<resource-constraint " in outs[2][0].payload


def test_error_bounced_from_an_unreachable_occupant_removes_it_with_307_and_333() -> None:
    """A connection manager reports a session gone (recipient-unavailable), an s2s gateway a
    remote server it cannot reach: the occupant leaves, the others see status 333 (XEP-0045
    status codes registry: removed because of a technical problem)."""
    room = _room()
    _join(room, "owner@example.com/a", "owner")
    _join(room, "bob@example.com/r", "bob", cm="cm-2")
    error = ("<presence type='error'><error type='wait'><recipient-unavailable "
             "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>")
    out = room.handle("presence", "error", "bob@example.com/r", "owner", _el(error))
    assert "bob" not in room.occupants
    [told] = [o for o in out if isinstance(o, Broadcast)]
    assert [o.nick for o in told.recipients] == ["owner"]
    assert b'type="unavailable"' in told.payload and b'role="none"' in told.payload
    assert b'<status code="307"/><status code="333"/>' in told.payload
    assert not [o for o in out if isinstance(o, Send)]  # nothing to where it bounced


def test_an_error_that_is_only_a_refusal_keeps_the_occupant() -> None:
    room = _room()
    _join(room, "owner@example.com/a", "owner")
    _join(room, "bob@example.com/r", "bob")
    refusal = ("<message type='error'><error type='cancel'><feature-not-implemented "
               "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
    assert room.handle("message", "error", "bob@example.com/r", None, _el(refusal)) == []
    assert "bob" in room.occupants
    # and an error from someone who is not an occupant changes nothing
    gone = refusal.replace("feature-not-implemented", "recipient-unavailable")
    assert room.handle("message", "error", "eve@example.com/r", None, _el(gone)) == []
