"""XEP-0313 §5 room archives in the room state machine (services/muc/room.py): stanza ids
on groupchat messages, the rows handed to the service, disco and who may read."""

from __future__ import annotations

import re

from lxml import etree

from services.muc.forms import Config, apply_form, config_form
from services.muc.room import Broadcast, Limits, Room
from shared.xmpp import archive

ROOM = "room@conference.example.com"
C = "jabber:client"
MUC = "http://jabber.org/protocol/muc"
OWNER = "owner@example.com/a"


def _el(xml: str) -> etree._Element:
    return etree.fromstring(xml.replace("<presence", f'<presence xmlns="{C}"', 1)
                            .replace("<message", f'<message xmlns="{C}"', 1))


def _room(archiving: bool = True, **config: object) -> Room:
    room = Room(ROOM, Config(**config), b"k" * 32, affiliations={"owner@example.com": "owner"},
                limits=Limits(max_history=10, archive=archiving))
    room.handle("presence", "", OWNER, "owner",
                _el(f"<presence><x xmlns='{MUC}'/></presence>"), cm="cm-1", now=1000.0)
    room.dirty.clear()
    return room


def _say(room: Room, body: str, extra: str = "") -> bytes:
    out = room.handle("message", "groupchat", OWNER, None,
                      _el(f"<message type='groupchat'><body>{body}</body>{extra}</message>"),
                      now=2000.5)
    [b] = [o for o in out if isinstance(o, Broadcast)]
    return b.payload


def test_a_groupchat_message_gets_the_rooms_stanza_id_and_is_handed_over_to_archive() -> None:
    room = _room()
    forged = f"<stanza-id xmlns='urn:xmpp:sid:0' by='{ROOM}' id='forged'/>"
    payload = _say(room, "hello", forged)
    assert b"forged" not in payload  # XEP-0359 §4
    found = re.search(rb'<stanza-id xmlns="urn:xmpp:sid:0" by="([^"]+)" id="([0-9a-f]+)"/>',
                      payload)
    assert found is not None and found.group(1).decode() == ROOM
    [(sid, sender, stored)] = room.dirty.archive
    assert sid == found.group(2).decode() and sender == f"{ROOM}/owner"
    assert archive.time_of(sid).timestamp() == 2000.5  # type: ignore[union-attr]
    assert b"<body>hello</body>" in stored and b"stanza-id" not in stored
    # history on join keeps the id, as the occupants got it
    assert b"stanza-id" in room.history[-1][1]
    assert 'var="urn:xmpp:mam:2"' in room.disco_info()


def test_subjects_unarchived_rooms_and_a_service_without_archives_give_no_id() -> None:
    room = _room()
    room.handle("message", "groupchat", OWNER, None,
                _el("<message type='groupchat'><subject>topic</subject></message>"))
    assert room.dirty.archive == []
    for off in (_room(archive=False), _room(archiving=False)):
        assert b"stanza-id" not in _say(off, "hi") and off.dirty.archive == []
        assert "urn:xmpp:mam:2" not in off.disco_info()


def test_muc_roomconfig_enablearchiving_turns_the_archive_off_and_on() -> None:
    assert "muc#roomconfig_enablearchiving" in config_form(Config(), [], [])
    off = apply_form(Config(), {"muc#roomconfig_enablearchiving": ["0"]}, 50)
    assert not off.archive
    assert apply_form(off, {"muc#roomconfig_enablearchiving": ["1"]}, 50).archive
    assert Config.from_json({"name": "an old room"}).archive  # stored before the field


def test_who_may_read_the_archive() -> None:
    room = _room()
    room.affiliations.update({"member@example.com": "member", "bad@example.com": "outcast"})
    room.handle("presence", "", "guest@example.com/r", "guest",
                _el(f"<presence><x xmlns='{MUC}'/></presence>"), cm="cm-1")
    assert room.may_read_archive(OWNER)
    assert room.may_read_archive("member@example.com/x")  # a member, not in the room
    assert room.may_read_archive("guest@example.com/r")  # an occupant of an open room
    assert not room.may_read_archive("stranger@example.com/r")
    assert not room.may_read_archive("bad@example.com/r")
    room.config.members_only = True
    assert not room.may_read_archive("guest@example.com/r")
    assert room.may_read_archive("member@example.com/x")
