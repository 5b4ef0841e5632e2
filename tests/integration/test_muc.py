"""Multi-user chat (XEP-0045) through the real cluster: raw streams for the exact stanzas."""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any

import pytest
from slixmpp import JID
from slixmpp.exceptions import PresenceError

from tests.conftest import Users
from tests.support.cluster import Cluster
from tests.support.muc import Occupant
from tests.support.xmpp import Client, eventually

MUC_DOMAIN = "conference.localhost"


@pytest.fixture(scope="module")
def muc(cluster: Cluster) -> Cluster:
    if "muc-1" not in cluster.procs or cluster.procs["muc-1"].poll() is not None:
        cluster.start_muc("muc-1")
    return cluster


async def _people(cluster: Cluster, users: Users, n: int) -> list[Occupant]:
    out = []
    for _ in range(n):
        jid, pw = await users.create("m")
        out.append(await Occupant(cluster.c2s_port, jid, pw).login())
    return out


def _room() -> str:
    return f"room-{secrets.token_hex(4)}@{MUC_DOMAIN}"


async def test_xep0045_6_disco_lists_the_service_and_its_features(muc: Cluster,
                                                                     users: Users) -> None:
    [a] = await _people(muc, users, 1)
    try:
        await a.send("<iq type='get' to='localhost' id='i1'>"
                     "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        await a.expect(r"id=\"i1\".*?<item jid=\"" + re.escape(MUC_DOMAIN) + "\"/>")
        await a.send(f"<iq type='get' to='{MUC_DOMAIN}' id='i2'>"
                     "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        await a.expect(r"id=\"i2\".*?<identity category=\"conference\" type=\"text\".*?"
                       r"http://jabber.org/protocol/muc\"")
        room = _room()
        await a.create(room, "owner")
        await a.send(f"<iq type='get' to='{room}' id='i3'>"
                     "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        info = (await a.expect(r"id=\"i3\".*?</iq>")).group(0)
        for feature in (b"muc_temporary", b"muc_public", b"muc_open", b"muc_unmoderated",
                        b"muc_semianonymous", b"muc_unsecured", b"urn:xmpp:occupant-id:0",
                        b"muc#roominfo", b"muc#roominfo_occupants"):
            assert feature in info, info
        # the public room is listed by the service
        await a.send(f"<iq type='get' to='{MUC_DOMAIN}' id='i4'>"
                     "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        await a.expect(r"id=\"i4\".*?<item jid=\"" + re.escape(room) + "\"")
    finally:
        await a.close()


async def test_xep0045_7_join_chat_history_subject_and_leave(muc: Cluster, users: Users) -> None:
    a, b = await _people(muc, users, 2)
    try:
        room = _room()
        await a.create(room, "alice")
        await a.send(f"<message to='{room}' type='groupchat'><body>first</body></message>")
        await a.expect(r"<message[^>]*from=\"" + re.escape(room) + r"/alice\".*?first")
        await a.send(f"<message to='{room}' type='groupchat'><subject>Topic</subject></message>")
        await a.expect(r"<subject>Topic</subject>")
        await b.join(room, "bob", expect=False)
        # §7.2.3: the occupants first, then self-presence with 110, history, the subject
        await b.expect(r"from=\"" + re.escape(room) + r"/alice\".*?role=\"moderator\"")
        await b.expect(r"from=\"" + re.escape(room) + r"/bob\".*?<status code=\"110\"/>")
        hist = await b.expect(r"<message[^>]*>.*?first.*?</message>")
        assert b"urn:xmpp:delay" in hist.group(0)
        await b.expect(r"<subject>Topic</subject>")
        await a.expect(r"from=\"" + re.escape(room) + r"/bob\"")  # alice sees bob (moderator)
        assert re.search(rb'jid="' + b.full.encode(), a.buf), "moderators see real JIDs"
        # groupchat reaches both, with an occupant id (XEP-0421)
        await b.send(f"<message to='{room}' type='groupchat' id='g1'><body>hi all</body>"
                     "</message>")
        for who in (a, b):
            m = await who.expect(r"<message[^>]*>(?:(?!</message>).)*hi all.*?</message>")
            assert b"urn:xmpp:occupant-id:0" in m.group(0)
        # bob leaves: alice sees unavailable
        await b.send(f"<presence to='{room}/bob' type='unavailable'/>")
        await a.expect(r"from=\"" + re.escape(room) + r"/bob\"[^>]*type=\"unavailable\"")
        await b.expect(r"type=\"unavailable\".*?<status code=\"110\"/>")
    finally:
        await a.close()
        await b.close()


async def test_xep0045_7_2_errors_and_nick_change(muc: Cluster, users: Users) -> None:
    a, b, c = await _people(muc, users, 3)
    try:
        room = _room()
        await a.create(room, "alice")
        await b.join(room, "bob")
        # §7.2.8 nick conflict (compared as RFC 8266 nicknames: case-insensitive)
        await c.send(f"<presence to='{room}/BOB'><x xmlns='http://jabber.org/protocol/muc'/>"
                     "</presence>")
        await c.expect(r"type=\"error\".*?<conflict ")
        # §7.6 nick change: 303 with the new nick
        await b.send(f"<presence to='{room}/robert'/>")
        await a.expect(r"/bob\"[^>]*type=\"unavailable\".*?nick=\"robert\".*?"
                       r"<status code=\"303\"/>")
        await a.expect(r"from=\"" + re.escape(room) + r"/robert\"")
        # §7.4: a non-occupant's groupchat is not-acceptable
        await c.send(f"<message to='{room}' type='groupchat' id='x1'><body>no</body></message>")
        await c.expect(r"id=\"x1\".*?<not-acceptable ")
        # §7.5 private message through the room
        await a.send(f"<message to='{room}/robert' type='chat'><body>psst</body></message>")
        pm = await b.expect(r"<message[^>]*from=\"" + re.escape(room) + r"/alice\".*?psst")
        assert b'type="chat"' in pm.group(0)
        # no such room: item-not-found for a message
        await c.send(f"<message to='nothere-{secrets.token_hex(3)}@{MUC_DOMAIN}' "
                     "type='groupchat' id='x2'><body>?</body></message>")
        await c.expect(r"id=\"x2\".*?<item-not-found ")
    finally:
        for o in (a, b, c):
            await o.close()


async def _configure(owner: Occupant, room: str, fields: dict[str, str], sid: str) -> None:
    body = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    await owner.send(f"<iq type='set' to='{room}' id='{sid}'>"
                     "<query xmlns='http://jabber.org/protocol/muc#owner'>"
                     "<x xmlns='jabber:x:data' type='submit'>"
                     "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig"
                     f"</value></field>{body}</x></query></iq>")
    await owner.expect(r"id=\"" + sid + r"\"[^>]*>|id=\"" + sid + "\"/>")


async def test_xep0045_password_members_only_and_bans(muc: Cluster, users: Users) -> None:
    a, b, c = await _people(muc, users, 3)
    try:
        room = _room()
        await a.create(room, "alice")
        await _configure(a, room, {"muc#roomconfig_passwordprotectedroom": "1",
                                   "muc#roomconfig_roomsecret": "s3cret"}, "c1")
        await b.join(room, "bob", expect=False)
        await b.expect(r"type=\"error\".*?<not-authorized ")  # §7.2.5
        await b.join(room, "bob", extra="<password>s3cret</password>")
        # §9.1 ban: 301 to everyone, forbidden on rejoin
        await a.send(f"<iq type='set' to='{room}' id='ban1'>"
                     "<query xmlns='http://jabber.org/protocol/muc#admin'>"
                     f"<item affiliation='outcast' jid='{b.jid}'><reason>spam</reason></item>"
                     "</query></iq>")
        await b.expect(r"type=\"unavailable\".*?<status code=\"110\"/><status code=\"301\"/>"
                       r"|type=\"unavailable\".*?<status code=\"301\"/>")
        await a.expect(r"id=\"ban1\"")
        await b.join(room, "bob", extra="<password>s3cret</password>", expect=False)
        await b.expect(r"type=\"error\".*?<forbidden ")  # §7.2.7
        # members-only: registration-required (§7.2.6), then admitted as a member
        await _configure(a, room, {"muc#roomconfig_membersonly": "1"}, "c2")
        await c.join(room, "carol", extra="<password>s3cret</password>", expect=False)
        await c.expect(r"type=\"error\".*?<registration-required ")
        await a.send(f"<iq type='set' to='{room}' id='mem1'>"
                     "<query xmlns='http://jabber.org/protocol/muc#admin'>"
                     f"<item affiliation='member' jid='{c.jid}'/></query></iq>")
        await a.expect(r"id=\"mem1\"")
        await c.join(room, "carol", extra="<password>s3cret</password>")
        await a.send(f"<iq type='get' to='{room}' id='list1'>"
                     "<query xmlns='http://jabber.org/protocol/muc#admin'>"
                     "<item affiliation='member'/></query></iq>")
        listed = await a.expect(r"id=\"list1\".*?</iq>")
        assert c.jid.encode() in listed.group(0)
    finally:
        for o in (a, b, c):
            await o.close()


async def test_xep0045_8_kick_voice_and_destroy(muc: Cluster, users: Users) -> None:
    a, b, c = await _people(muc, users, 3)
    try:
        room = _room()
        await a.create(room, "alice")
        await _configure(a, room, {"muc#roomconfig_moderatedroom": "1"}, "c1")
        await b.join(room, "bob")
        await c.join(room, "carol")
        # §7.4: a visitor of a moderated room may not speak
        await b.send(f"<message to='{room}' type='groupchat' id='v1'><body>x</body></message>")
        await b.expect(r"id=\"v1\".*?<forbidden ")
        # §8.3: voice
        await a.send(f"<iq type='set' to='{room}' id='voice'>"
                     "<query xmlns='http://jabber.org/protocol/muc#admin'>"
                     "<item nick='bob' role='participant'/></query></iq>")
        await b.expect(r"/bob\".*?role=\"participant\".*?<status code=\"110\"/>")
        await b.send(f"<message to='{room}' type='groupchat'><body>now I speak</body></message>")
        await c.expect(r"now I speak")
        # §8.2: kick with 307
        await a.send(f"<iq type='set' to='{room}' id='kick'>"
                     "<query xmlns='http://jabber.org/protocol/muc#admin'>"
                     "<item nick='carol' role='none'><reason>bye</reason></item></query></iq>")
        await c.expect(r"type=\"unavailable\".*?role=\"none\".*?<status code=\"307\"/>")
        await b.expect(r"/carol\"[^>]*type=\"unavailable\".*?<status code=\"307\"/>")
        # a participant may not kick
        await b.send(f"<iq type='set' to='{room}' id='kick2'>"
                     "<query xmlns='http://jabber.org/protocol/muc#admin'>"
                     "<item nick='alice' role='none'/></query></iq>")
        await b.expect(r"id=\"kick2\".*?<forbidden ")
        # XEP-0410 self-ping
        await b.send(f"<iq type='get' to='{room}/bob' id='sp'><ping xmlns='urn:xmpp:ping'/></iq>")
        await b.expect(r"type=\"result\" id=\"sp\"")
        await c.send(f"<iq type='get' to='{room}/carol' id='sp2'>"
                     "<ping xmlns='urn:xmpp:ping'/></iq>")
        await c.expect(r"id=\"sp2\".*?<not-acceptable ")
        # §10.9 destroy with an alternate venue
        await a.send(f"<iq type='set' to='{room}' id='d1'>"
                     "<query xmlns='http://jabber.org/protocol/muc#owner'>"
                     f"<destroy jid='other@{MUC_DOMAIN}'><reason>moved</reason></destroy>"
                     "</query></iq>")
        await b.expect(r"type=\"unavailable\".*?<destroy jid=\"other@" + re.escape(MUC_DOMAIN))
        await a.expect(r"id=\"d1\"")
        await b.send(f"<message to='{room}' type='groupchat' id='gone'><body>?</body></message>")
        await b.expect(r"id=\"gone\".*?<item-not-found ")
    finally:
        for o in (a, b, c):
            await o.close()


async def test_occupant_leaves_when_its_session_ends(muc: Cluster, users: Users) -> None:
    """The presence service sends unavailable to every room the session was in (RFC 6121
    §4.6.3), so the others see the occupant leave."""
    a, b = await _people(muc, users, 2)
    try:
        room = _room()
        await a.create(room, "alice")
        await b.join(room, "bob")
        await b.client.close()
        await a.expect(r"from=\"" + re.escape(room) + r"/bob\"[^>]*type=\"unavailable\"")
    finally:
        await a.close()


async def test_xep0045_16_3_iqs_between_occupants_and_vcards(muc: Cluster,
                                                           users: Users) -> None:
    """An IQ to room/nick reaches that occupant from the asker's room JID and its answer
    comes back from the answerer's room JID with the asker's id; neither sees the other's
    real JID (semi-anonymous room).  A vCard request is answered by the occupant's server
    (XEP-0054).  A room whose allowpm says no refuses both with forbidden."""
    a, b = await _people(muc, users, 2)
    try:
        await a.send("<iq type='set' id='vc0'><vCard xmlns='vcard-temp'><FN>Alice A</FN>"
                     "</vCard></iq>")
        await a.expect(r"id=\"vc0\"")
        room = _room()
        await a.create(room, "alice")
        await b.join(room, "bob")
        await b.send(f"<iq type='get' to='{room}/alice' id='ver1'>"
                     "<query xmlns='jabber:iq:version'/></iq>")
        asked = await a.expect(r"<iq[^>]*from=\"" + re.escape(room) + r"/bob\"[^>]*>.*?</iq>")
        assert b.jid.encode() not in asked.group(0)
        asked_id = re.search(rb'id="([^"]+)"', asked.group(0))
        assert asked_id is not None and asked_id.group(1) != b"ver1"
        await a.send(f"<iq type='result' to='{room}/bob' id='{asked_id.group(1).decode()}'>"
                     "<query xmlns='jabber:iq:version'><name>raw</name><version>1</version>"
                     "</query></iq>")
        answer = await b.expect(r"<iq[^>]*id=\"ver1\"[^>]*>.*?</iq>")
        assert f'from="{room}/alice"'.encode() in answer.group(0)
        assert b"<name>raw</name>" in answer.group(0) and a.jid.encode() not in answer.group(0)
        await b.send(f"<iq type='get' to='{room}/alice' id='vc1'>"
                     "<vCard xmlns='vcard-temp'/></iq>")
        card = await b.expect(r"<iq[^>]*id=\"vc1\"[^>]*>.*?</iq>")
        assert b"<FN>Alice A</FN>" in card.group(0) and b'type="result"' in card.group(0)
        assert f'from="{room}/alice"'.encode() in card.group(0)
        await b.send(f"<iq type='get' to='{room}/nobody' id='ver2'>"
                     "<query xmlns='jabber:iq:version'/></iq>")
        await b.expect(r"id=\"ver2\".*?<item-not-found ")
        await _configure(a, room, {"muc#roomconfig_allowpm": "none"}, "c1")
        await b.send(f"<iq type='get' to='{room}/alice' id='ver3'>"
                     "<query xmlns='jabber:iq:version'/></iq>")
        await b.expect(r"id=\"ver3\".*?<forbidden ")
    finally:
        await a.close()
        await b.close()


async def test_xep0045_7_13_voice_request_approved_by_a_moderator(muc: Cluster,
                                                                  users: Users) -> None:
    a, b = await _people(muc, users, 2)
    try:
        room = _room()
        await a.create(room, "alice")
        await _configure(a, room, {"muc#roomconfig_moderatedroom": "1"}, "c1")
        await b.join(room, "bob")
        await b.send(f"<message to='{room}'><x xmlns='jabber:x:data' type='submit'>"
                     "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request"
                     "</value></field><field var='muc#role'><value>participant</value></field>"
                     "</x></message>")
        form = await a.expect(r"<message[^>]*from=\"" + re.escape(room)
                              + r"\"[^>]*>(?:(?!</message>).)*muc#request.*?</message>")
        assert b.full.encode() in form.group(0) and b'type="form"' in form.group(0)
        # §8.6: the moderator submits the form back with muc#request_allow
        x = re.search(rb'<x xmlns="jabber:x:data".*?</x>', form.group(0))
        assert x is not None
        submitted = (x.group(0).decode().replace('type="form"', 'type="submit"')
                     .replace("<value>0</value></field></x>", "<value>1</value></field></x>"))
        await a.send(f"<message to='{room}'>{submitted}</message>")
        await b.expect(r"/bob\".*?role=\"participant\".*?<status code=\"110\"/>")
        await b.send(f"<message to='{room}' type='groupchat'><body>thanks</body></message>")
        await a.expect("thanks")
    finally:
        await a.close()
        await b.close()


async def test_xep0045_7_10_nickname_registration(muc: Cluster, users: Users) -> None:
    a, b, c = await _people(muc, users, 3)
    try:
        room = _room()
        await a.create(room, "alice")
        await b.send(f"<iq type='get' to='{room}' id='r1'>"
                     "<query xmlns='jabber:iq:register'/></iq>")
        await b.expect(r"id=\"r1\".*?muc#register_roomnick.*?</iq>")
        await b.send(f"<iq type='set' to='{room}' id='r2'><query xmlns='jabber:iq:register'>"
                     "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>"
                     "http://jabber.org/protocol/muc#register</value></field>"
                     "<field var='muc#register_roomnick'><value>Bobby</value></field></x>"
                     "</query></iq>")
        await b.expect(r"id=\"r2\"[^>]*type=\"result\"|type=\"result\"[^>]*id=\"r2\"")
        # §7.12: the reserved nick, discovered before joining
        await b.send(f"<iq type='get' to='{room}' id='r3'><query "
                     "xmlns='http://jabber.org/protocol/disco#info' node='x-roomuser-item'/></iq>")
        await b.expect(r"id=\"r3\".*?<identity category=\"conference\" type=\"text\" "
                       r"name=\"Bobby\"/>")
        # another user may not take it; its owner joins with it as a member
        await c.join(room, "bobby", expect=False)
        await c.expect(r"type=\"error\".*?<conflict ")
        await b.join(room, "Bobby")
        await a.expect(r"/Bobby\".*?affiliation=\"member\"")
        # members-only: only members may register
        await _configure(a, room, {"muc#roomconfig_membersonly": "1"}, "c1")
        await c.send(f"<iq type='get' to='{room}' id='r4'>"
                     "<query xmlns='jabber:iq:register'/></iq>")
        await c.expect(r"id=\"r4\".*?<not-allowed ")
    finally:
        for o in (a, b, c):
            await o.close()


class MucClient(Client):
    def __init__(self, jid: str, password: str) -> None:
        super().__init__(jid, password)
        self.register_plugin("xep_0004")
        self.register_plugin("xep_0045")
        self.groupchat: asyncio.Queue[Any] = asyncio.Queue()
        self.add_event_handler("groupchat_message", self.groupchat.put_nowait)
        self.muc_presence: list[tuple[str, str, set[int]]] = []  # from, type, status codes
        self.add_event_handler("groupchat_presence", lambda p: self.muc_presence.append(
            (str(p["from"]), str(p["type"]), set(p["muc"]["status_codes"]))))


async def _slix(cluster: Cluster, users: Users) -> MucClient:
    jid, pw = await users.create("s")
    client = MucClient(f"{jid}/slix", pw)
    await client.login("127.0.0.1", cluster.c2s_port)
    return client


async def _body(queue: asyncio.Queue[Any], text: str, timeout: float = 10) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            msg = await queue.get()
            if msg["body"] == text:
                return msg


async def test_xep0045_with_slixmpp_create_configure_join_history_kick(
        muc: Cluster, users: Users) -> None:
    owner, guest = await _slix(muc, users), await _slix(muc, users)
    try:
        plugin = owner.plugin["xep_0045"]
        room = JID(_room())
        self_presence, *_ = await plugin.join_muc_wait(room, "owner", maxstanzas=0, timeout=15)
        assert 201 in self_presence["muc"]["status_codes"]
        form = await plugin.get_room_config(room, timeout=10)  # §10.1.3 reserved room
        assert "muc#roomconfig_roomname" in form.get_fields()
        form.set_values({"muc#roomconfig_roomname": "Slix room",
                         "muc#roomconfig_persistentroom": True})
        await plugin.set_room_config(room, form, timeout=10)
        owner.send_message(mto=room, mbody="history line", mtype="groupchat")
        await _body(owner.groupchat, "history line")
        _, _, occupants, history = await guest.plugin["xep_0045"].join_muc_wait(
            room, "guest", maxstanzas=5, timeout=15)
        assert [m["body"] for m in history] == ["history line"]
        assert {o["from"].resource for o in occupants} == {"owner", "guest"}
        guest.send_message(mto=room, mbody="hello from slixmpp", mtype="groupchat")
        got = await _body(owner.groupchat, "hello from slixmpp")
        assert got["from"] == JID(f"{room}/guest")
        await plugin.set_role(room, "guest", "none", reason="test", timeout=10)  # §8.2
        kick = (f"{room}/guest", "unavailable", {110, 307})
        await eventually(lambda: kick in guest.muc_presence, 10, "the guest sees itself kicked")
        members = await plugin.get_affiliation_list(room, "owner", timeout=10)
        assert [JID(j).bare for j in members] == [JID(owner.boundjid.bare)]
    finally:
        await owner.logout()
        await guest.logout()


async def _message(queue: asyncio.Queue[Any], match: Any, timeout: float = 10) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            msg = await queue.get()
            if match(msg):
                return msg


async def test_xep0045_with_slixmpp_password_subject_voice_request_private_ban_destroy(
        muc: Cluster, users: Users) -> None:
    """The rest of the room's life through slixmpp's plugin: a password-protected moderated
    room refuses a wrong password (not-authorized, §7.2.5), the subject on join (§7.2.15),
    a visitor's voice request approved by the moderator (§7.13, §8.6), a private message
    (§7.5), a ban (301, §9.1) and forbidden on rejoin (§7.2.7), destruction (§10.9)."""
    owner, guest = await _slix(muc, users), await _slix(muc, users)
    try:
        plugin, gplugin = owner.plugin["xep_0045"], guest.plugin["xep_0045"]
        room = JID(_room())
        await plugin.join_muc_wait(room, "owner", maxstanzas=0, timeout=15)
        form = await plugin.get_room_config(room, timeout=10)
        form.set_values({"muc#roomconfig_moderatedroom": True,
                         "muc#roomconfig_passwordprotectedroom": True,
                         "muc#roomconfig_roomsecret": "pw"})
        await plugin.set_room_config(room, form, timeout=10)
        plugin.set_subject(room, "Today's topic")
        await eventually(lambda: plugin.get_jid_property(room, "owner", "role") == "moderator",
                         10, "the owner is a moderator")
        with pytest.raises(PresenceError) as refused:
            await gplugin.join_muc_wait(room, "guest", password="wrong", timeout=15)
        assert refused.value.condition == "not-authorized"
        self_presence, subject, _, _ = await gplugin.join_muc_wait(
            room, "guest", password="pw", maxstanzas=0, timeout=15)
        assert self_presence["muc"]["role"] == "visitor" and subject["subject"] == "Today's topic"
        forms: asyncio.Queue[Any] = asyncio.Queue()  # slixmpp's "message" needs a body
        owner.add_event_handler("message_xform", forms.put_nowait)
        gplugin.request_voice(room, "participant")
        request = await _message(forms, lambda m: m["form"]["type"] == "form")
        answer = owner.make_message(room)
        answer["form"]["type"] = "submit"
        for var, value in (("FORM_TYPE", "http://jabber.org/protocol/muc#request"),
                           ("muc#role", "participant"), ("muc#request_allow", "1"),
                           ("muc#roomnick", request["form"].get_values()["muc#roomnick"]),
                           ("muc#jid", str(request["form"].get_values()["muc#jid"]))):
            answer["form"].add_field(var=var, value=value)
        answer.send()
        await eventually(lambda: gplugin.get_jid_property(room, "guest", "role") == "participant",
                         10, "the guest got voice")
        guest.send_message(mto=room, mbody="I may speak", mtype="groupchat")
        await _body(owner.groupchat, "I may speak")
        guest.send_message(mto=JID(f"{room}/owner"), mbody="just for you", mtype="chat")
        pm = await _message(owner.messages, lambda m: m["body"] == "just for you")
        assert pm["from"] == JID(f"{room}/guest") and pm["type"] == "chat"
        await plugin.set_affiliation(room, "outcast", jid=guest.boundjid.bare, timeout=10)
        await eventually(lambda: (f"{room}/guest", "unavailable", {110, 301})
                         in guest.muc_presence, 10, "the guest sees itself banned")
        with pytest.raises(PresenceError) as banned:
            await gplugin.join_muc_wait(room, "guest", password="pw", timeout=15)
        assert banned.value.condition == "forbidden"
        await plugin.destroy(room, reason="done", timeout=10)
        await eventually(lambda: any(f == f"{room}/owner" and t == "unavailable"
                                     for f, t, _ in owner.muc_presence), 10, "destroyed")
    finally:
        await owner.logout()
        await guest.logout()
