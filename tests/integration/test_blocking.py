"""XEP-0191 blocking command through the cluster: list, push, and enforcement by the router
and the presence service."""

from __future__ import annotations

import asyncio

from tests.conftest import Users
from tests.support.cluster import Cluster
from tests.support.xmpp import Client, RawClient, eventually, raw_login


async def test_xep0191_block_unblock_and_enforcement(cluster: Cluster, users: Users) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    bob_client = Client(f"{bob}/b", pw_b)
    await bob_client.login("127.0.0.1", cluster.c2s_port)
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(raw, alice, pw_a, resource="a")
        await raw.send(b"<presence/>")
        await raw.send(
            f"<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='{bob}'/>"
            "</block></iq>".encode()
        )
        out = await raw.read_until(b"</block></iq>")  # the result and the push (§3.3)
        assert b'id="b1"' in out and b'type="set"' in out
        await raw.send(
            b"<iq type='get' id='b2'><blocklist xmlns='urn:xmpp:blocking'/></iq>"
        )
        listed = await raw.read_until(b"</blocklist>")
        assert f'<item jid="{bob}"/>'.encode() in listed

        # the blocked contact's message bounces (§3.4) ...
        bob_client.send_message(mto=alice, mbody="let me in", mtype="chat")
        bounce = await asyncio.wait_for(bob_client.messages.get(), 10)
        assert bounce["type"] == "error"
        assert bounce["error"]["condition"] == "service-unavailable"
        # ... and the user's own message to the blocked contact is refused (§3.5)
        await raw.send(f"<message to='{bob}' type='chat' id='m1'><body>x</body></message>"
                       .encode())
        refused = await raw.read_until(b"</message>")
        assert b"<not-acceptable" in refused
        assert b'<blocked xmlns="urn:xmpp:blocking:errors"/>' in refused

        await raw.send(
            b"<iq type='set' id='b3'><unblock xmlns='urn:xmpp:blocking'/></iq>"
        )
        await raw.read_until(b"</unblock></iq>")

        async def delivered() -> bool:
            bob_client.send_message(mto=f"{alice}/a", mbody="hello again", mtype="chat")
            await asyncio.sleep(0.3)
            return True

        await delivered()
        got = await raw.read_until(b"hello again")
        assert b"hello again" in got
    finally:
        await raw.close()
        await bob_client.logout()


async def test_xep0191_blocked_contact_gets_unavailable_and_no_more_presence(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    a = Client(f"{alice}/a", pw_a)
    b = Client(f"{bob}/b", pw_b)
    await a.login("127.0.0.1", cluster.c2s_port)
    await b.login("127.0.0.1", cluster.c2s_port)
    a.register_plugin("xep_0191")
    try:
        a.send_presence(pto=bob, ptype="subscribe")
        await eventually(lambda: b.saw_presence(f"{alice}/a"), 15, "bob sees alice")
        await a.plugin["xep_0191"].block([bob], timeout=10)
        await eventually(lambda: b.saw_presence(f"{alice}/a", "unavailable"), 10,
                         "unavailable to the blocked contact")
        a.send_presence(pstatus="new status")
        await asyncio.sleep(1)
        assert not b.saw_presence(f"{alice}/a", "available", "new status")
    finally:
        await a.logout()
        await b.logout()
