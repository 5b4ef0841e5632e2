"""XEP-0313 §5 room archives through a real cluster: the room's stanza-id on groupchat
messages, queries on the room JID (raw streams and slixmpp's xep_0313), who may read, and
muc#roomconfig_enablearchiving."""

from __future__ import annotations

import re
import secrets
from typing import Any

import pytest
from slixmpp import JID

from tests.conftest import Users
from tests.support.cluster import Cluster
from tests.support.muc import Occupant
from tests.support.xmpp import Client, eventually

MUC_DOMAIN = "conference.localhost"
SID = re.compile(rb'<stanza-id xmlns="urn:xmpp:sid:0" by="([^"]+)" id="([0-9a-f]+)"/>')


@pytest.fixture(scope="module")
def muc(cluster: Cluster) -> Cluster:
    if "muc-1" not in cluster.procs or cluster.procs["muc-1"].poll() is not None:
        cluster.start_muc("muc-1")
    return cluster


async def _people(cluster: Cluster, users: Users, n: int) -> list[Occupant]:
    out = []
    for _ in range(n):
        jid, pw = await users.create("ma")
        out.append(await Occupant(cluster.c2s_port, jid, pw).login())
    return out


async def _query(who: Occupant, room: str, qid: str, rsm: str = "") -> bytes:
    """The results and the IQ answer of one query of the room's archive."""
    iq = secrets.token_hex(3)
    rsm_xml = f"<set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set>" if rsm else ""
    mark = who.pos
    await who.send(f"<iq type='set' to='{room}' id='{iq}'><query xmlns='urn:xmpp:mam:2' "
                   f"queryid='{qid}'>{rsm_xml}</query></iq>")
    await who.expect(r"<iq[^>]*id=\"" + iq + r"\"(?:[^>]*/>|.*?</iq>)")
    return who.buf[mark:who.pos]


async def test_groupchat_gets_the_rooms_stanza_id_and_occupants_page_the_archive(
        muc: Cluster, users: Users) -> None:
    a, b, stranger = await _people(muc, users, 3)
    try:
        room = f"arch-{secrets.token_hex(4)}@{MUC_DOMAIN}"
        await a.create(room, "alice")
        await b.join(room, "bob")
        await a.send(f"<iq type='get' to='{room}' id='d1'>"
                     "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        info = (await a.expect(r"id=\"d1\".*?</iq>")).group(0)
        assert b'var="urn:xmpp:mam:2"' in info and b'var="urn:xmpp:sid:0"' in info
        sids = []
        for n in range(3):
            forged = f"<stanza-id xmlns='urn:xmpp:sid:0' by='{room}' id='forged'/>"
            await a.send(f"<message to='{room}' type='groupchat'><body>line {n}</body>"
                         f"{forged}</message>")
            got = (await b.expect(r"<message[^>]*>(?:(?!</message>).)*line " + str(n)
                                  + r".*?</message>")).group(0)
            assert b"forged" not in got
            found = SID.search(got)
            assert found is not None and found.group(1) == room.encode(), got
            sids.append(found.group(2))

        async def all_archived() -> bool:
            return len(re.findall(rb"<result ", await _query(b, room, "all"))) == 3

        await eventually(all_archived, 15, "three rows in the room's archive")
        page = await _query(b, room, "p1", "<max>2</max>")
        results = re.findall(rb'<message[^>]*from="([^"]+)"[^>]*>\s*<result xmlns="urn:xmpp:mam:2"'
                             rb' queryid="p1" id="([0-9a-f]+)"', page)
        assert results == [(room.encode(), sids[0]), (room.encode(), sids[1])], page
        assert f'from="{room}/alice"'.encode() in page  # the message as the room sent it
        assert b"<count>3</count>" in page and b'complete="true"' not in page
        rest = await _query(b, room, "p2", f"<max>2</max><after>{sids[1].decode()}</after>")
        assert re.findall(rb'queryid="p2" id="([0-9a-f]+)"', rest) == [sids[2]]
        assert b'complete="true"' in rest
        # §5: someone who is neither an occupant nor a member may not read it
        out = await _query(stranger, room, "s")
        assert b'type="error"' in out and b"<forbidden " in out, out
        # the owner turns archiving off: no id, no feature, no archive to query
        await a.send(f"<iq type='set' to='{room}' id='cfg'>"
                     "<query xmlns='http://jabber.org/protocol/muc#owner'>"
                     "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
                     "<value>http://jabber.org/protocol/muc#roomconfig</value></field>"
                     "<field var='muc#roomconfig_enablearchiving'><value>0</value></field>"
                     "</x></query></iq>")
        await a.expect(r"id=\"cfg\"")
        await a.send(f"<message to='{room}' type='groupchat'><body>off the record</body>"
                     "</message>")
        got = (await b.expect(r"<message[^>]*>(?:(?!</message>).)*off the record.*?"
                              r"</message>")).group(0)
        assert b"stanza-id" not in got
        out = await _query(b, room, "off")
        assert b"<service-unavailable " in out, out
    finally:
        for o in (a, b, stranger):
            await o.close()


async def test_slixmpp_reads_a_rooms_archive_with_xep_0313(muc: Cluster, users: Users
                                                          ) -> None:
    jid, pw = await users.create("sa")
    client = Client(f"{jid}/slix", pw)
    for plugin in ("xep_0030", "xep_0045", "xep_0059", "xep_0297", "xep_0313", "xep_0359"):
        client.register_plugin(plugin)
    groupchat: list[Any] = []
    client.add_event_handler("groupchat_message", groupchat.append)
    try:
        await client.login("127.0.0.1", muc.c2s_port)
        room = JID(f"slixarch-{secrets.token_hex(4)}@{MUC_DOMAIN}")
        await client.plugin["xep_0045"].join_muc_wait(room, "me", maxstanzas=0, timeout=15)
        info = await client.plugin["xep_0030"].get_info(jid=room, timeout=10)
        assert "urn:xmpp:mam:2" in info["disco_info"]["features"]
        for n in range(5):
            client.send_message(mto=room, mbody=f"slix {n}", mtype="groupchat")
        await eventually(lambda: len(groupchat) >= 5, 15, "the room's echoes")
        ids = [m["stanza_id"]["id"] for m in groupchat]
        assert all(m["stanza_id"]["by"] == room for m in groupchat)

        async def archived() -> list[Any]:
            return [m async for m in client.plugin["xep_0313"].iterate(
                jid=room, rsm={"max": 2}, total=100)]

        async def five() -> bool:
            return len(await archived()) == 5

        await eventually(five, 15, "five rows")
        got = await archived()
        assert [m["mam_result"]["id"] for m in got] == ids
        assert [m["mam_result"]["forwarded"]["stanza"]["body"] for m in got] == [
            f"slix {n}" for n in range(5)]
    finally:
        await client.logout()
