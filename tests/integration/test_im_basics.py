"""The remaining IM basics through the running cluster: XEP-0012 last activity, XEP-0202
entity time, XEP-0157 contact addresses, XEP-0077 in band (password change, account removal,
the registration rate limit)."""

from __future__ import annotations

import datetime
import secrets

import pytest
from slixmpp.exceptions import IqError

from shared.store import keys
from shared.store.roster import RosterItem
from shared.xmpp.subscription import State, Subscription
from tests.conftest import Users
from tests.support.cluster import Cluster
from tests.support.xmpp import (
    Client,
    RawClient,
    ask_iq,
    eventually,
    new_source,
    raw_auth,
    raw_login,
)


async def login(cluster: Cluster, jid: str, pw: str, resource: str) -> Client:
    client = Client(f"{jid}/{resource}", pw)
    client.register_plugin("xep_0012")
    client.register_plugin("xep_0202")
    client.register_plugin("xep_0030")
    await client.login("127.0.0.1", cluster.c2s_port)
    return client


async def test_xep0202_entity_time_and_xep0012_uptime_of_the_server(
    cluster: Cluster, users: Users
) -> None:
    jid, pw = await users.create()
    client = await login(cluster, jid, pw, "clock")
    try:
        reply = await client.plugin["xep_0202"].get_entity_time("localhost", timeout=10)
        # slixmpp's get_utc appends a 'Z' to a value that already ends with one (XEP-0202
        # §3 Example 2): read the element itself
        text = reply["entity_time"].xml.findtext("{urn:xmpp:time}utc")
        assert reply["entity_time"].xml.findtext("{urn:xmpp:time}tzo") == "+00:00"
        utc = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")
        now = datetime.datetime.now(datetime.UTC)
        assert abs((now - utc).total_seconds()) < 3600  # the server's clock, in UTC
        last = await client.plugin["xep_0012"].get_last_activity("localhost", timeout=10)
        assert int(last["last_activity"]["seconds"]) >= 0
        info = await client.plugin["xep_0030"].get_info(jid="localhost", timeout=10)
        features = set(info["disco_info"]["features"])
        assert {"jabber:iq:last", "urn:xmpp:time", "jabber:iq:register"} <= features
    finally:
        await client.logout()


async def test_xep0012_4_last_activity_of_a_contact_forbidden_to_others(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    carol, pw_c = await users.create("carol")
    await users.rosters.put(bob, RosterItem(alice, state=State(Subscription.FROM)))
    await users.rosters.put(alice, RosterItem(bob, state=State(Subscription.TO)))
    a = await login(cluster, alice, pw_a, "desk")
    c = await login(cluster, carol, pw_c, "desk")
    b = await login(cluster, bob, pw_b, "phone")
    try:
        # bob's presence reaching alice says the presence service holds it: before that the
        # account is neither online nor has a last activity (item-not-found, §4)
        await eventually(lambda: a.saw_presence(f"{bob}/phone"), 15, "bob available")
        online = await a.plugin["xep_0012"].get_last_activity(bob, timeout=10)
        assert int(online["last_activity"]["seconds"]) == 0  # available now
        b.send_presence(ptype="unavailable", pstatus="gone fishing")
        await b.logout()

        async def recorded() -> bool:
            row = await users.db.fetchrow("t", "SELECT status FROM last_activity "
                                               "WHERE owner = $1", bob)
            return row is not None

        await eventually(recorded, 15, "bob's last activity recorded")
        last = await a.plugin["xep_0012"].get_last_activity(bob, timeout=10)
        assert int(last["last_activity"]["seconds"]) >= 0
        assert last["last_activity"]["status"] == "gone fishing"
        with pytest.raises(IqError) as refused:
            await c.plugin["xep_0012"].get_last_activity(bob, timeout=10)
        assert refused.value.iq["error"]["condition"] == "forbidden"
    finally:
        await a.logout()
        await c.logout()


async def test_xep0157_contact_addresses_in_disco_info(cluster: Cluster, users: Users) -> None:
    port = cluster.start_cm(
        "cm-contacts",
        STANZAD_CONTACT_ADDRESSES="abuse-addresses=mailto:abuse@example.com;"
        "admin-addresses=xmpp:admin@localhost,mailto:admin@example.com")
    jid, pw = await users.create()
    raw = RawClient("127.0.0.1", port)
    try:
        await raw_login(raw, jid, pw)
        info = await ask_iq(raw, "<iq type='get' id='i1'><query "
                                 "xmlns='http://jabber.org/protocol/disco#info'/></iq>", "i1")
        assert b"<value>http://jabber.org/network/serverinfo</value>" in info
        assert (b'<field var="admin-addresses"><value>xmpp:admin@localhost</value>'
                b"<value>mailto:admin@example.com</value></field>") in info
        assert b"<value>mailto:abuse@example.com</value>" in info
    finally:
        await raw.close()


async def test_xep0077_3_3_password_change_closes_the_other_sessions_with_reset(
    cluster: Cluster, users: Users
) -> None:
    jid, pw = await users.create("changer")
    local = jid.partition("@")[0]
    one = RawClient("127.0.0.1", cluster.c2s_port)
    two = RawClient("127.0.0.1", cluster.c2s_port)
    again = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(one, jid, pw, "one")
        await raw_login(two, jid, pw, "two")
        form = await ask_iq(one, "<iq type='get' id='f1'><query xmlns='jabber:iq:register'/>"
                                 "</iq>", "f1")
        assert b"<registered/>" in form and f"<username>{local}</username>".encode() in form
        other = await ask_iq(one, "<iq type='set' id='c0'><query xmlns='jabber:iq:register'>"
                                  "<username>somebody</username><password>x</password>"
                                  "</query></iq>", "c0")
        assert b'type="error"' in other and b"<not-allowed" in other
        reply = await ask_iq(one, "<iq type='set' id='c1'><query xmlns='jabber:iq:register'>"
                                  f"<username>{local}</username><password>new-pw</password>"
                                  "</query></iq>", "c1")
        assert b'type="result"' in reply, reply
        await two.expect_stream_error("reset", timeout=15)
        # the session that changed it stays; the new password works, the old one does not
        await one.send(b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert b'type="result"' in await one.read_until(b'id="p1"')
        await raw_auth(again, jid, "new-pw")
        with pytest.raises(PermissionError):
            await raw_auth(RawClient("127.0.0.1", cluster.c2s_port), jid, pw)
    finally:
        for raw in (one, two, again):
            await raw.close()


async def test_xep0077_3_2_removal_deletes_the_data_and_ends_every_session(
    cluster: Cluster, users: Users
) -> None:
    jid, pw = await users.create("leaver")
    friend, _ = await users.create("friend")
    await users.rosters.put(jid, RosterItem(friend, state=State(Subscription.BOTH)))
    await users.account_data.set_vcard(jid, b'<vCard xmlns="vcard-temp"><FN>Me</FN></vCard>')
    one = RawClient("127.0.0.1", cluster.c2s_port)
    two = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(one, jid, pw, "one")
        await raw_login(two, jid, pw, "two")
        await one.send(b"<presence/>")
        await one.read_until(b"<presence")
        assert await users.redis.hlen(keys.presence(jid)) == 1
        await one.send(b"<iq type='set' id='r1'><query xmlns='jabber:iq:register'><remove/>"
                       b"</query></iq>")
        data = await one.expect_stream_error("not-authorized", timeout=15)
        assert b'id="r1"' in data and data.index(b'type="result"') < data.index(b"stream:error")
        await two.expect_stream_error("not-authorized", timeout=15)
        assert not await users.accounts.exists(jid)
        assert await users.rosters.items(jid) == {}
        assert await users.account_data.vcard(jid) is None
        assert await users.redis.exists(keys.presence(jid)) == 0
        with pytest.raises(PermissionError):
            await raw_auth(RawClient("127.0.0.1", cluster.c2s_port), jid, pw)
    finally:
        await one.close()
        await two.close()


async def register(port: int, source: str, name: str) -> bytes:
    raw = RawClient("127.0.0.1", port, source=source)
    try:
        await raw.open()
        await raw.starttls()
        await raw.send(raw.header())
        await raw.read_until(b"</stream:features>")
        return await ask_iq(raw, "<iq type='set' id='reg'><query xmlns='jabber:iq:register'>"
                                 f"<username>{name}</username><password>pw-{name}</password>"
                                 "</query></iq>", "reg")
    finally:
        await raw.close()


async def test_xep0077_registration_is_rate_limited_per_address(cluster: Cluster) -> None:
    port = cluster.start_cm("cm-register-limit", STANZAD_ALLOW_REGISTRATION="true",
                            STANZAD_REGISTRATIONS_PER_IP_PER_HOUR="2")
    source = new_source()
    tag = secrets.token_hex(3)
    assert b'type="result"' in await register(port, source, f"first{tag}")
    assert b'type="result"' in await register(port, source, f"second{tag}")
    third = await register(port, source, f"third{tag}")
    assert b'type="error"' in third and b"<resource-constraint" in third, third
    # another address is not limited by this one's count
    assert b'type="result"' in await register(port, new_source(), f"fourth{tag}")
