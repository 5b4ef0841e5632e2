"""XEP-0160 offline storage racing a login's flush (shared/router/service.py `_late_flush`)."""

from __future__ import annotations

import dataclasses

from shared.store import keys
from shared.store.sessions import SessionRecord
from tests.conftest import Users
from tests.support.cluster import Cluster
from tests.support.xmpp import RawClient, eventually, raw_login


async def test_xep0160_message_stored_after_the_login_flush_still_reaches_the_resource(
    cluster: Cluster, users: Users
) -> None:
    """The router decides to store a message on the session table as it last saw it (its
    cache); the recipient's resource became available meanwhile and its login flush has
    run already.  Simulated by marking the session available straight in Redis, with no
    session event (the router's cache stays stale) and no initial presence (no flush):
    the stored message must still be delivered, with the one stored before it."""
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    a = RawClient("127.0.0.1", cluster.c2s_port)
    b = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(a, alice, pw_a, resource="a")
        await raw_login(b, bob, pw_b, resource="desk")
        await a.send(_chat(bob, "first"))
        await eventually(lambda: _count(users, bob, 1), 15, "the first message stored")
        raw = await users.redis.hget(keys.sessions(bob), "desk")
        assert raw is not None
        available = dataclasses.replace(SessionRecord.decode(raw), available=True)
        await users.redis.hset(keys.sessions(bob), "desk", available.encode())
        await a.send(_chat(bob, "second"))
        got = await b.read_until(b"second", timeout=15)
        assert b"first" in got and got.index(b"first") < got.index(b"second")
        assert await users.offline.count(bob) == 0
    finally:
        await a.close()
        await b.close()


def _chat(to: str, body: str) -> bytes:
    return f"<message to='{to}' type='chat'><body>{body}</body></message>".encode()


async def _count(users: Users, bare: str, n: int) -> bool:
    return await users.offline.count(bare) == n
