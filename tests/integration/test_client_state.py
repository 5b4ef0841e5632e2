"""XEP-0352 Client State Indication through the running cluster: an inactive session gets
no presence until it is active again, then the latest of each contact only; messages with a
body go out at once, after what was held (in order); XEP-0198 counts held stanzas only when
written, and a session cut while inactive gets them on <resume/>."""

from __future__ import annotations

import re

from shared.store.roster import RosterItem
from shared.xmpp.subscription import State, Subscription
from tests.conftest import Users
from tests.support.cluster import Cluster, metric_value
from tests.support.xmpp import (
    Client,
    RawClient,
    eventually,
    raw_auth,
    raw_login,
    raw_sm_login,
)

INACTIVE = b"<inactive xmlns='urn:xmpp:csi:0'/>"
ACTIVE = b"<active xmlns='urn:xmpp:csi:0'/>"


async def friends(users: Users, a: str, b: str) -> None:
    """A 'both' subscription between two accounts, straight in the store."""
    await users.rosters.put(a, RosterItem(b, state=State(Subscription.BOTH)))
    await users.rosters.put(b, RosterItem(a, state=State(Subscription.BOTH)))


def held(cluster: Cluster, name: str = "stanzad_cm_csi_replaced_total") -> float:
    return metric_value(cluster.metrics("cm-1"), name)


async def available(raw: RawClient, jid: str, resource: str) -> None:
    """Initial presence; returns once the session got its own presence back (RFC 6121
    §4.2.2), so it is available to its contacts."""
    await raw.send(b"<presence/>")
    await raw.read_until(f'from="{jid}/{resource}"'.encode())


def presences_from(data: bytes, jid: str) -> list[bytes]:
    return re.findall(rb"<presence[^>]*from=\"" + re.escape(jid.encode()) + rb"[^\"]*\".*?"
                      rb"(?:/>|</presence>)", data, re.S)


async def test_xep0352_inactive_gets_no_presence_until_active_then_the_latest_per_contact(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    await friends(users, alice, bob)
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    bob_client = Client(f"{bob}/phone", pw_b)
    try:
        await raw_sm_login(raw, alice, pw_a, "phone")
        await available(raw, alice, "phone")
        await raw.send(INACTIVE)
        replaced = held(cluster)
        await bob_client.login("127.0.0.1", cluster.c2s_port)  # initial presence: held
        for n in range(1, 4):
            bob_client.send_presence(pstatus=f"status {n}")
        # the first presence and three replacements reached the connection manager
        await eventually(lambda: held(cluster) >= replaced + 3, 15, "presence held")
        # an ack request is not a stanza: answered at once, and nothing held came before it
        await raw.send(b"<r xmlns='urn:xmpp:sm:3'/>")
        before = await raw.read_until(b"<a xmlns=")
        assert presences_from(before, bob) == [], before
        await raw.send(ACTIVE + b"<iq type='get' id='after'><ping xmlns='urn:xmpp:ping'/></iq>")
        after = await raw.read_until(b'id="after"')
        got = presences_from(after, bob)
        assert len(got) == 1 and b"<status>status 3</status>" in got[0], after
        # XEP-0198: counted when written: every stanza written so far can be acknowledged
        await raw.send(b"<r xmlns='urn:xmpp:sm:3'/>")
        answer = await raw.read_until(b"<a xmlns=")
        assert b"<a " in answer
    finally:
        await bob_client.logout()
        await raw.close()


async def test_xep0352_a_message_with_a_body_goes_at_once_after_what_was_held(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    await friends(users, alice, bob)
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    bob_client = Client(f"{bob}/desk", pw_b)
    try:
        await raw_login(raw, alice, pw_a, "phone")
        await available(raw, alice, "phone")
        await raw.send(INACTIVE)
        replaced = held(cluster, "stanzad_cm_csi_held_stanzas")
        await bob_client.login("127.0.0.1", cluster.c2s_port)
        await eventually(lambda: held(cluster, "stanzad_cm_csi_held_stanzas") > replaced,
                         15, "bob's presence held")
        composing = bob_client.make_message(mto=f"{alice}/phone", mtype="chat")
        composing.xml.append(composing.xml.makeelement(
            "{http://jabber.org/protocol/chatstates}composing", {}))
        composing.send()
        bob_client.send_message(mto=f"{alice}/phone", mbody="wake up", mtype="chat")
        data = await raw.read_until(b"<body>wake up</body>")
        # held presence and chat state first, in the order they came, then the message
        assert data.index(f'from="{bob}/desk"'.encode()) < data.index(b"<composing")
        assert data.index(b"<composing") < data.index(b"<body>wake up</body>")
    finally:
        await bob_client.logout()
        await raw.close()


async def test_xep0352_xep0198_held_presence_is_resent_after_resumption(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    await friends(users, alice, bob)
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    bob_client = Client(f"{bob}/desk", pw_b)
    again = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        previd = await raw_sm_login(raw, alice, pw_a, "phone")
        await available(raw, alice, "phone")
        await raw.send(INACTIVE)
        before = held(cluster, "stanzad_cm_csi_held_stanzas")
        await bob_client.login("127.0.0.1", cluster.c2s_port)
        bob_client.send_presence(pstatus="latest")
        await eventually(lambda: held(cluster, "stanzad_cm_csi_held_stanzas") > before,
                         15, "bob's presence held")
        await eventually(lambda: held(cluster, "stanzad_cm_csi_replaced_total") > 0, 15,
                         "bob's second presence replaced the first")
        assert raw.writer is not None
        raw.writer.transport.abort()  # broken: what was held joins the XEP-0198 queue
        await raw_auth(again, alice, pw_a)
        await again.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='0'/>".encode())
        data = await again.read_until(b"<status>latest</status>")
        assert b"<resumed" in data
        assert len(presences_from(data, bob)) == 1, data
    finally:
        await bob_client.logout()
        await raw.close()
        await again.close()
