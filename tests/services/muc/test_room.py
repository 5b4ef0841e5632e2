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


def _iq(xml: str) -> etree._Element:
    return etree.fromstring(xml.replace("<iq", f'<iq xmlns="{C}"', 1))


def _answer(room: Room, real: str, to_nick: str | None, sent: bytes,
            type_: str = "result", body: str = "", now: float = 1000.0) -> list:
    """The answer of ``real`` to the IQ ``sent`` that the room forwarded to it."""
    asked = etree.fromstring(sent)
    xml = (f"<iq type='{type_}' id='{asked.get('id')}' from='{real}' "
           f"to='{asked.get('from')}'>{body}</iq>")
    return room.handle("iq", type_, real, to_nick, _iq(xml), now=now)


def test_xep0045_16_3_iq_to_an_occupant_is_forwarded_and_its_answer_routed_back() -> None:
    room = _room()
    _join(room, "owner@example.com/a", "owner", cm="cm-1")
    _join(room, "bob@example.com/r", "bob", cm="cm-2")
    ask = _iq("<iq type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>")
    [fwd] = room.handle("iq", "get", "bob@example.com/r", "owner", ask)
    assert isinstance(fwd, Send) and fwd.to == "owner@example.com/a" and fwd.cm == "cm-1"
    sent = etree.fromstring(fwd.payload)
    assert sent.get("from") == f"{ROOM}/bob" and sent.get("id") != "v1"
    assert b"bob@example.com" not in fwd.payload  # §16.3: the asker's real JID stays hidden
    version = "<query xmlns='jabber:iq:version'><name>x</name></query>"
    [back] = _answer(room, "owner@example.com/a", "bob", fwd.payload, body=version)
    assert isinstance(back, Send) and back.to == "bob@example.com/r" and back.cm == "cm-2"
    got = etree.fromstring(back.payload)
    assert (got.get("from"), got.get("id"), got.get("type")) == (f"{ROOM}/owner", "v1", "result")
    assert b"owner@example.com" not in back.payload and b"<name>x</name>" in back.payload
    # an error comes back the same way
    [err] = _answer(room, "owner@example.com/a", "bob", fwd.payload, "error",
                    "<error type='cancel'><service-unavailable "
                    "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>")
    assert b"service-unavailable" in err.payload and b'id="v1"' in err.payload
    # an answer from someone else, or with an id the room did not write, goes nowhere
    assert _answer(room, "eve@example.com/r", "bob", fwd.payload) == []
    forged = fwd.payload.replace(b'id="muc1-', b'id="muc1-A')
    assert _answer(room, "owner@example.com/a", "bob", forged) == []
    assert room.handle("iq", "result", "owner@example.com/a", "bob",
                       _iq("<iq type='result' id='v1'/>")) == []


def test_vcard_of_an_occupant_is_asked_of_its_account_and_rules_of_private_traffic() -> None:
    room = _room()
    _join(room, "owner@example.com/a", "owner")
    _join(room, "bob@example.com/r", "bob")
    vcard = _iq("<iq type='get' id='vc'><vCard xmlns='vcard-temp'/></iq>")
    [fwd] = room.handle("iq", "get", "owner@example.com/a", "bob", vcard)
    assert fwd.to == "bob@example.com" and fwd.cm == ""  # XEP-0054: the account's server
    [back] = _answer(room, "bob@example.com", "owner", fwd.payload,
                     body="<vCard xmlns='vcard-temp'><FN>Bob</FN></vCard>")
    assert back.to == "owner@example.com/a" and b"<FN>Bob</FN>" in back.payload
    # XEP-0410 §3: a self-ping is the room's to answer; a ping to another is forwarded
    ping = _iq("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
    [own] = room.handle("iq", "get", "bob@example.com/r", "bob", ping)
    assert own.type == "result" and own.to == "bob@example.com/r"
    [other] = room.handle("iq", "get", "bob@example.com/r", "owner", ping)
    assert other.type == "get" and other.to == "owner@example.com/a"
    # not an occupant: not-acceptable; no such nick: item-not-found
    [e1] = room.handle("iq", "get", "eve@example.com/r", "bob", ping)
    [e2] = room.handle("iq", "get", "bob@example.com/r", "nobody", ping)
    assert b"<not-acceptable " in e1.payload and b"<item-not-found " in e2.payload
    # muc#roomconfig_allowpm applies to IQs as to private messages
    room.config.allow_pm = "moderators"
    [e3] = room.handle("iq", "get", "bob@example.com/r", "owner", vcard)
    assert b"<forbidden " in e3.payload
    assert room.handle("iq", "get", "owner@example.com/a", "bob", vcard)[0].type == "get"


VOICE_REQUEST = (
    "<message><x xmlns='jabber:x:data' type='submit'>"
    "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>"
    "<field var='muc#role'><value>participant</value></field></x></message>")


def _decision(nick: str, jid: str, allow: str) -> etree._Element:
    return _el(
        "<message><x xmlns='jabber:x:data' type='submit'>"
        "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>"
        "<field var='muc#role'><value>participant</value></field>"
        f"<field var='muc#jid'><value>{jid}</value></field>"
        f"<field var='muc#roomnick'><value>{nick}</value></field>"
        f"<field var='muc#request_allow'><value>{allow}</value></field></x></message>")


def test_xep0045_7_13_and_8_6_voice_request_goes_to_moderators_and_approval_grants_voice(
        ) -> None:
    room = _room(moderated=True)
    _join(room, "owner@example.com/a", "owner")
    _join(room, "bob@example.com/r", "bob")
    _join(room, "carol@example.com/r", "carol")
    assert room.occupants["bob"].role == "visitor"
    [form] = room.handle("message", "", "bob@example.com/r", None, _el(VOICE_REQUEST))
    assert isinstance(form, Broadcast) and [o.nick for o in form.recipients] == ["owner"]
    for part in (b'type="form"', b"muc#request_allow", b"bob@example.com/r", b">bob<"):
        assert part in form.payload
    # a visitor may not decide; a denial changes nothing
    [e] = room.handle("message", "", "carol@example.com/r", None,
                      _decision("bob", "bob@example.com/r", "true"))
    assert b"<forbidden " in e.payload
    assert room.handle("message", "", "owner@example.com/a", None,
                       _decision("bob", "bob@example.com/r", "false")) == []
    assert room.occupants["bob"].role == "visitor"
    out = room.handle("message", "", "owner@example.com/a", None,
                      _decision("bob", "bob@example.com/r", "true"))
    assert room.occupants["bob"].role == "participant"
    mine = [o for o in out if isinstance(o, Send) and o.to == "bob@example.com/r"]
    assert b'role="participant"' in mine[0].payload and b'code="110"' in mine[0].payload
    # who has voice already asks for nothing; a non-occupant may not ask
    assert room.handle("message", "", "bob@example.com/r", None, _el(VOICE_REQUEST)) == []
    [e] = room.handle("message", "", "eve@example.com/r", None, _el(VOICE_REQUEST))
    assert b"<not-acceptable " in e.payload


def _register(room: Room, real: str, nick: str | None, type_: str = "set") -> list:
    if nick is None:
        body = "<remove/>" if type_ == "set" else ""
    else:
        body = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
                "<value>http://jabber.org/protocol/muc#register</value></field>"
                f"<field var='muc#register_roomnick'><value>{nick}</value></field></x>")
    return room.handle("iq", type_, real, None, _iq(
        f"<iq type='{type_}' id='reg'><query xmlns='jabber:iq:register'>{body}</query></iq>"))


def test_xep0045_7_10_registration_reserves_a_nick_and_gives_membership() -> None:
    room = _room()
    _join(room, "owner@example.com/a", "owner")
    _join(room, "bob@example.com/r", "bob")
    [form] = _register(room, "bob@example.com/r", None, "get")
    assert b"muc#register_roomnick" in form.payload and b"<registered/>" not in form.payload
    out = _register(room, "bob@example.com/r", "Robert")
    assert out[-1].type == "result"
    assert room.affiliation("bob@example.com/r") == "member"
    assert room.nicks == {"bob@example.com": "Robert"}
    assert room.dirty.affiliations == {"bob@example.com"}
    told = [o for o in out if isinstance(o, Broadcast)]
    assert told and b'affiliation="member"' in told[0].payload  # §7.10: occupants told
    [again] = _register(room, "bob@example.com/r", None, "get")
    assert b"<registered/><username>Robert</username>" in again.payload
    # §7.12: the reserved nick, found through disco; none for someone else
    nick_q = ("<iq type='get' id='n'><query xmlns='http://jabber.org/protocol/disco#info' "
              "node='x-roomuser-item'/></iq>")
    [n] = room.handle("iq", "get", "bob@example.com/x", None, _iq(nick_q))
    assert b'name="Robert"' in n.payload
    [n] = room.handle("iq", "get", "eve@example.com/x", None, _iq(nick_q))
    assert b"<identity" not in n.payload and b'node="x-roomuser-item"' in n.payload
    # §7.12: another user may neither join with it nor register it (compared per RFC 8266)
    [c] = _join(room, "eve@example.com/r", "robert")
    assert b"<conflict " in c.payload
    [c] = _register(room, "eve@example.com/r", "ROBERT")
    assert b"<conflict " in c.payload
    # the member list names it; a ban forgets it (§9.1)
    [lst] = room.handle("iq", "get", "owner@example.com/a", None, _iq(
        "<iq type='get' id='l'><query xmlns='http://jabber.org/protocol/muc#admin'>"
        "<item affiliation='member'/></query></iq>"))
    assert b'jid="bob@example.com" nick="Robert"' in lst.payload
    room.handle("iq", "set", "owner@example.com/a", None, _iq(
        "<iq type='set' id='b'><query xmlns='http://jabber.org/protocol/muc#admin'>"
        "<item affiliation='outcast' jid='bob@example.com'/></query></iq>"))
    assert room.nicks == {} and "bob" not in room.occupants
    [f] = _register(room, "bob@example.com/r", "Robert")
    assert b"<forbidden " in f.payload


def test_registration_in_a_members_only_room_and_its_removal() -> None:
    room = _room(members_only=True)
    room.affiliations["mem@example.com"] = "member"
    [e] = _register(room, "eve@example.com/r", "eve")
    assert b"<not-allowed " in e.payload  # membership is granted by admins here (§9.3)
    assert _register(room, "mem@example.com/r", "Mem")[-1].type == "result"
    assert room.nicks == {"mem@example.com": "Mem"}
    _register(room, "mem@example.com/r", None)  # XEP-0077 §3.2
    assert room.nicks == {} and room.affiliation("mem@example.com") == "none"
    [bad] = room.handle("iq", "set", "owner@example.com/a", None, _iq(
        "<iq type='set' id='r'><query xmlns='jabber:iq:register'/></iq>"))
    assert b"<bad-request " in bad.payload


def test_rejoin_of_an_occupant_gets_the_room_again() -> None:
    room = _room()
    _join(room, "owner@example.com/a", "owner")
    _join(room, "bob@example.com/r", "bob")
    out = _join(room, "bob@example.com/r", "bob")  # its client lost the room's state
    to_bob = [o for o in out if isinstance(o, Send) and o.to == "bob@example.com/r"]
    assert any(f"{ROOM}/owner".encode() in o.payload for o in to_bob)
    assert any(b'code="110"' in o.payload for o in to_bob)
    assert b"<subject" in to_bob[-1].payload
    assert len(room.occupants) == 2


def test_a_remote_occupant_that_went_away_silently_is_asked_then_removed() -> None:
    """Its server's stream died without a bounce: the room asks it (disco#info) once it has
    been silent for `idle`, and removes it with 333 when no answer came within `timeout`;
    an answer keeps it, an error to the question removes it at once."""
    room = _room()
    _join(room, "owner@example.com/a", "owner", cm="cm-1")
    for who in ("far", "gone", "err"):
        _join(room, f"{who}@remote.example/r", who, cm="")  # remote: through s2s
    assert room.sweep(1000.0 + 10, idle=300, timeout=60) == []  # not silent yet
    probes = room.sweep(1000.0 + 300, idle=300, timeout=60)
    assert sorted(p.to for p in probes) == [f"{w}@remote.example/r" for w in ("err", "far",
                                                                              "gone")]
    assert all(b"disco#info" in p.payload and p.cm == "" for p in probes)
    assert room.sweep(1000.0 + 310, idle=300, timeout=60) == []  # asked once
    by_to = {p.to: p for p in probes}
    _answer(room, "far@remote.example/r", None, by_to["far@remote.example/r"].payload,
            body="<query xmlns='http://jabber.org/protocol/disco#info'/>", now=1320.0)
    out = _answer(room, "err@remote.example/r", None, by_to["err@remote.example/r"].payload,
                  "error", "<error type='cancel'><service-unavailable "
                  "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>", now=1320.0)
    assert "err" not in room.occupants and any(b'code="333"' in o.payload for o in out)
    out = room.sweep(1000.0 + 360, idle=300, timeout=60)
    assert set(room.occupants) == {"owner", "far"}
    told = [o for o in out if isinstance(o, Broadcast)]
    assert {o.nick for b in told for o in b.recipients} == {"owner", "far"}
    assert all(b'<status code="307"/><status code="333"/>' in b.payload for b in told)
    # silent again for `idle` after its answer: asked again
    assert room.sweep(1320.0 + 299, idle=300, timeout=60) == []
    assert [p.to for p in room.sweep(1320.0 + 300, idle=300, timeout=60)] == [
        "far@remote.example/r"]
