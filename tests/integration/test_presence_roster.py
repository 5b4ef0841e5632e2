"""Presence, rosters, subscriptions and offline messages through the real cluster
(RFC 6121 §2-§4, XEP-0160, XEP-0203), driven by slixmpp clients."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from shared.store import keys
from shared.xmpp.subscription import Subscription
from tests.conftest import Users
from tests.support.cluster import Cluster
from tests.support.xmpp import Client, RawClient, eventually, raw_login


async def _login(cluster: Cluster, jid: str, pw: str, resource: str,
                 port: int | None = None) -> Client:
    client = Client(f"{jid}/{resource}", pw)
    await client.login("127.0.0.1", port or cluster.c2s_port)
    return client


async def _subscription(users: Users, user: str, contact: str) -> Subscription | None:
    item = await users.rosters.item(user, contact)
    return item.state.subscription if item else None


async def test_rfc6121_3_handshake_to_both_then_presence_on_every_resource(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    a1 = await _login(cluster, alice, pw_a, "one")
    a2 = await _login(cluster, alice, pw_a, "two")
    b1 = await _login(cluster, bob, pw_b, "phone")
    clients = [a1, a2, b1]
    try:
        await a1.get_roster()
        # slixmpp answers requests itself (auto_authorize) and subscribes back (auto_subscribe)
        a1.send_presence(pto=bob, ptype="subscribe")

        async def both() -> bool:
            return (await _subscription(users, alice, bob) == Subscription.BOTH
                    and await _subscription(users, bob, alice) == Subscription.BOTH)

        await eventually(both, 15, "subscription both ways")
        await eventually(lambda: a1.saw_presence(f"{bob}/phone")
                         and a2.saw_presence(f"{bob}/phone"), 10, "alice sees bob")
        await eventually(lambda: b1.saw_presence(f"{alice}/one")
                         and b1.saw_presence(f"{alice}/two"), 10, "bob sees both of alice")
        await a1.get_roster()
        assert a1.client_roster[bob]["subscription"] == "both"

        b1.send_presence(pshow="away", pstatus="at lunch", ppriority=5)
        await eventually(lambda: a1.saw_presence(f"{bob}/phone", "away", "at lunch")
                         and a2.saw_presence(f"{bob}/phone", "away", "at lunch"),
                         10, "status change seen")
        record = (await users.redis.hget(keys.sessions(bob), "phone")).decode()
        assert record.endswith(" 5 1")  # priority 5, available: what the router uses

        await b1.logout()
        clients.remove(b1)
        await eventually(lambda: a1.saw_presence(f"{bob}/phone", "unavailable")
                         and a2.saw_presence(f"{bob}/phone", "unavailable"),
                         10, "bob unavailable")
    finally:
        for c in clients:
            await c.logout()


async def test_xep0160_offline_messages_arrive_in_order_with_delay_at_next_login(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    a = await _login(cluster, alice, pw_a, "desk")
    try:
        for i in range(5):
            a.send_message(mto=bob, mbody=f"while you were out {i}", mtype="chat")
        await eventually(lambda: users.offline.count(bob), 10, "stored")
        await eventually(
            lambda: _llen_is(users, bob, 5), 10, "all five stored"
        )
        b = await _login(cluster, bob, pw_b, "back")
        try:
            bodies, stamps = [], []
            for _ in range(5):
                msg = await asyncio.wait_for(b.messages.get(), 10)
                bodies.append(msg["body"])
                stamps.append(msg["delay"]["stamp"])
            assert bodies == [f"while you were out {i}" for i in range(5)]
            assert all(s is not None for s in stamps)
            assert await users.offline.count(bob) == 0
        finally:
            await b.logout()
    finally:
        await a.logout()


async def _llen_is(users: Users, bare: str, n: int) -> bool:
    return await users.offline.count(bare) == n


async def test_rfc6121_3_1_3_subscription_request_to_offline_user_waits_for_login(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    a = await _login(cluster, alice, pw_a, "desk")
    try:
        a.send_presence(pto=bob, ptype="subscribe")
        await eventually(lambda: _pending_in(users, bob, alice), 10, "request stored")
        b = Client(f"{bob}/later", pw_b)
        b.auto_authorize = None  # see the request rather than answer it
        requests: list[str] = []
        b.add_event_handler("presence_subscribe", lambda p: requests.append(str(p["from"])))
        await b.login("127.0.0.1", cluster.c2s_port)
        try:
            await eventually(lambda: alice in requests, 10, "request delivered at login")
        finally:
            await b.logout()
    finally:
        await a.logout()


async def _pending_in(users: Users, user: str, contact: str) -> bool:
    item = await users.rosters.item(user, contact)
    return item is not None and item.state.pending_in


async def test_rfc6121_2_6_roster_versioning(cluster: Cluster, users: Users) -> None:
    alice, pw = await users.create("alice")
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(raw, alice, pw)
        await raw.send(b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster' ver=''/></iq>")
        full = await raw.read_until(b"</iq>")
        assert b'ver="0"' in full
        await raw.send(
            b"<iq type='set' id='s1'><query xmlns='jabber:iq:roster'>"
            b"<item jid='carol@localhost' name='Carol'><group>Friends</group></item>"
            b"</query></iq>"
        )
        pushed = await raw.read_until(b"</query></iq>")  # the result, then the push (§2.3.2)
        assert b'id="s1"' in pushed and b"carol@localhost" in pushed
        assert b'ver="1"' in pushed
        await raw.send(b"<iq type='get' id='r2'><query xmlns='jabber:iq:roster' ver='1'/></iq>")
        unchanged = await raw.read_until(b'id="r2"')
        assert b"<query" not in unchanged.split(b'id="r2"')[-1]
        await raw.send(
            b"<iq type='set' id='s2'><query xmlns='jabber:iq:roster'>"
            b"<item jid='dave@localhost'/></query></iq>"
        )
        await raw.read_until(b'id="s2"')
        await raw.send(b"<iq type='get' id='r3'><query xmlns='jabber:iq:roster' ver='1'/></iq>")
        delta = await raw.read_until(b"dave@localhost")
        assert b"carol@localhost" not in delta.split(b'id="r3"')[-1]  # only the change
    finally:
        await raw.close()


async def test_rfc6121_2_3_3_roster_set_with_two_items_is_bad_request(
    cluster: Cluster, users: Users
) -> None:
    alice, pw = await users.create("alice")
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(raw, alice, pw)
        await raw.send(
            b"<iq type='set' id='s1'><query xmlns='jabber:iq:roster'>"
            b"<item jid='x@localhost'/><item jid='y@localhost'/></query></iq>"
        )
        reply = await raw.read_until(b"</iq>")
        assert b'type="error"' in reply and b"<bad-request" in reply
    finally:
        await raw.close()


async def test_killed_connection_manager_contacts_see_unavailable_within_30s(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    doomed_port = cluster.start_cm("cm-doomed")
    a = await _login(cluster, alice, pw_a, "stays")
    b = await _login(cluster, bob, pw_b, "doomed", port=doomed_port)
    try:
        a.send_presence(pto=bob, ptype="subscribe")
        await eventually(lambda: a.saw_presence(f"{bob}/doomed"), 15, "alice sees bob")
        os.kill(cluster.procs["cm-doomed"].pid, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await eventually(lambda: a.saw_presence(f"{bob}/doomed", "unavailable"), 30,
                         "unavailable after the crash")
        assert loop.time() - started < 30
        assert await users.redis.hlen(keys.sessions(bob)) == 0
        members = await users.redis.smembers(keys.cm_sessions("cm-doomed"))
        assert not members
        listing = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services.cli.main", "sessions"],
            env=cluster.env("cli"),
            capture_output=True, text=True, timeout=30, check=True,
        )
        assert bob not in listing.stdout and "cm-doomed" not in listing.stdout
        assert f"{alice}/stays" in listing.stdout
    finally:
        b.abort()
        await a.logout()


async def test_rfc6121_2_5_2_removing_an_item_cancels_both_ways(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    a = await _login(cluster, alice, pw_a, "a")
    b = await _login(cluster, bob, pw_b, "b")
    try:
        a.send_presence(pto=bob, ptype="subscribe")

        async def both() -> bool:
            return await _subscription(users, bob, alice) == Subscription.BOTH

        await eventually(both, 15, "both")
        await a.get_roster()
        a.del_roster_item(bob)

        async def cancelled() -> bool:
            return (await _subscription(users, alice, bob) is None
                    and await _subscription(users, bob, alice) == Subscription.NONE)

        await eventually(cancelled, 10, "subscription cancelled both ways")
        await eventually(lambda: b.saw_presence(f"{alice}/a", "unavailable"), 10,
                         "bob told alice is gone")
    finally:
        await a.logout()
        await b.logout()


async def test_rfc6121_4_6_directed_presence_ends_with_unavailable(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    a = await _login(cluster, alice, pw_a, "a")
    b = await _login(cluster, bob, pw_b, "b")
    try:
        a.send_presence(pto=f"{bob}/b", pstatus="just for you")
        await eventually(lambda: b.saw_presence(f"{alice}/a", "available", "just for you"),
                         10, "directed presence")
        await a.logout()
        await eventually(lambda: b.saw_presence(f"{alice}/a", "unavailable"), 10,
                         "unavailable to the directed presence target")
    finally:
        await b.logout()


async def test_xep0160_offline_storage_cap_gives_an_error(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, _ = await users.create("bob")
    for _ in range(100):  # the cap is 100
        await users.offline.store(bob, b"<message/>", 100)
    a = await _login(cluster, alice, pw_a, "a")
    try:
        a.send_message(mto=bob, mbody="one too many", mtype="chat")
        msg = await asyncio.wait_for(a.messages.get(), 10)
        assert msg["type"] == "error"
        assert msg["error"]["condition"] == "service-unavailable"
        assert await users.offline.count(bob) == 100
    finally:
        await a.logout()
