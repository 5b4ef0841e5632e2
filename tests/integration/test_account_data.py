"""IQs answered on behalf of an account: vCard-temp (XEP-0054), private XML storage
(XEP-0049), disco on the bare JID (XEP-0030), and disco on the server listing them."""

from __future__ import annotations

from tests.conftest import Users
from tests.support.cluster import Cluster
from tests.support.xmpp import RawClient, ask_iq, raw_login


async def test_xep0054_vcard_set_get_and_read_by_another_user(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    a, b = RawClient("127.0.0.1", cluster.c2s_port), RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(a, alice, pw_a)
        await raw_login(b, bob, pw_b)
        empty = await ask_iq(a, b"<iq type='get' id='v0'><vCard xmlns='vcard-temp'/></iq>", b"v0")
        assert b'<vCard xmlns="vcard-temp"/>' in empty
        stored = await ask_iq(
            a, b"<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Alice A.</FN></vCard></iq>",
            b"v1",
        )
        assert b'type="result"' in stored
        theirs = await ask_iq(
            b, f"<iq type='get' id='v2' to='{alice}'><vCard xmlns='vcard-temp'/></iq>".encode(),
            b"v2",
        )
        assert b"<FN>Alice A.</FN>" in theirs and f'from="{alice}"'.encode() in theirs
        forbidden = await ask_iq(
            b, f"<iq type='set' id='v3' to='{alice}'><vCard xmlns='vcard-temp'/></iq>".encode(),
            b"v3",
        )
        assert b"<forbidden" in forbidden
    finally:
        await a.close()
        await b.close()


async def test_xep0049_private_storage_round_trip(cluster: Cluster, users: Users) -> None:
    alice, pw = await users.create("alice")
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(raw, alice, pw)
        await ask_iq(
            raw,
            b"<iq type='set' id='p1'><query xmlns='jabber:iq:private'>"
            b"<prefs xmlns='urn:example:prefs'><theme>dark</theme></prefs></query></iq>",
            b"p1",
        )
        got = await ask_iq(
            raw,
            b"<iq type='get' id='p2'><query xmlns='jabber:iq:private'>"
            b"<prefs xmlns='urn:example:prefs'/></query></iq>",
            b"p2",
        )
        assert b"<theme>dark</theme>" in got
        refused = await ask_iq(
            raw,
            b"<iq type='set' id='p3'><query xmlns='jabber:iq:private'>"
            b"<x xmlns='jabber:iq:roster'/></query></iq>",
            b"p3",
        )
        assert b"<not-acceptable" in refused
    finally:
        await raw.close()


async def test_xep0030_disco_on_bare_jid_and_server(cluster: Cluster, users: Users) -> None:
    alice, pw = await users.create("alice")
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(raw, alice, pw)
        info = await ask_iq(
            raw,
            f"<iq type='get' id='d1' to='{alice}'>"
            "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>".encode(),
            b"d1",
        )
        assert b'category="account"' in info and b'var="vcard-temp"' in info
        server = await ask_iq(
            raw,
            b"<iq type='get' id='d2' to='localhost'>"
            b"<query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            b"d2",
        )
        assert b'var="msgoffline"' in server and b'var="jabber:iq:private"' in server
    finally:
        await raw.close()
