"""XEP-0280 carbons and XEP-0313 MAM with a real client library (slixmpp's xep_0280,
xep_0313 and xep_0059 plugins)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Users
from tests.support.cluster import Cluster
from tests.support.xmpp import Client, eventually


def _client(jid: str, pw: str) -> Client:
    c = Client(jid, pw)
    for plugin in ("xep_0030", "xep_0059", "xep_0280", "xep_0297", "xep_0313", "xep_0359"):
        c.register_plugin(plugin)
    return c


async def _archive(c: Client, total: int = 1000) -> list[Any]:
    return [m async for m in c.plugin["xep_0313"].iterate(rsm={"max": 20}, total=total)]


async def test_slixmpp_sent_carbon_and_both_archives_share_the_stanza_id(
    cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    phone, laptop, b = (_client(f"{alice}/phone", pw_a), _client(f"{alice}/laptop", pw_a),
                        _client(f"{bob}/desk", pw_b))
    sent: asyncio.Queue[Any] = asyncio.Queue()
    laptop.add_event_handler("carbon_sent", sent.put_nowait)
    try:
        for c in (phone, laptop, b):
            await c.login("127.0.0.1", cluster.c2s_port)
        await laptop.plugin["xep_0280"].enable(timeout=10)
        # RFC 6121 §8.5.2.2.1: before bob's initial presence is in, a message to him waits
        # offline for his next login; his presence coming back to him says it is in
        await eventually(lambda: b.saw_presence(f"{bob}/desk"), 15, "bob available")
        phone.send_message(mto=bob, mbody="hi from the phone", mtype="chat")
        carbon = await asyncio.wait_for(sent.get(), 15)
        assert carbon["carbon_sent"]["body"] == "hi from the phone"
        got = await asyncio.wait_for(b.messages.get(), 15)
        assert got["body"] == "hi from the phone"
        sid = got["stanza_id"]["id"]
        assert sid and got["stanza_id"]["by"] == bob

        async def archived(c: Client) -> bool:
            return any(m["mam_result"]["id"] == sid for m in await _archive(c))

        await eventually(lambda: archived(phone), 15, "alice's row")
        await eventually(lambda: archived(b), 15, "bob's row")
        mine = await _archive(phone)
        forwarded = mine[-1]["mam_result"]["forwarded"]["stanza"]
        assert forwarded["body"] == "hi from the phone" and forwarded["to"] == bob
    finally:
        for c in (phone, laptop, b):
            await c.logout()


async def test_slixmpp_pages_through_the_archive_with_rsm(cluster: Cluster, users: Users
                                                          ) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    a, b = _client(f"{alice}/a", pw_a), _client(f"{bob}/b", pw_b)
    try:
        for c in (a, b):
            await c.login("127.0.0.1", cluster.c2s_port)
        for i in range(45):
            a.send_message(mto=bob, mbody=f"m{i}", mtype="chat")
        for _ in range(45):
            await asyncio.wait_for(b.messages.get(), 15)

        async def all_archived() -> bool:
            return len(await _archive(b)) == 45

        await eventually(all_archived, 20, "45 rows")
        bodies = [m["mam_result"]["forwarded"]["stanza"]["body"] for m in await _archive(b)]
        assert bodies == [f"m{i}" for i in range(45)]  # 3 pages of 20, each once, in order
    finally:
        for c in (a, b):
            await c.logout()
