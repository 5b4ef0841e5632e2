"""Redis holds only what may be lost: after a FLUSHALL, with one user online and others
offline, accounts, rosters, offline messages (XEP-0160), vCards (XEP-0054), private data
(XEP-0049) and block lists (XEP-0191) are all there when the clients log in again, because
they live in PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.localservers import LocalPostgres
from tests.conftest import Users
from tests.support.cluster import Cluster, new_cluster
from tests.support.xmpp import RawClient, ask_iq, eventually, raw_login


@pytest.fixture(scope="module")
def flushed(postgres: LocalPostgres) -> Iterator[Cluster]:
    """A cluster of its own: the flush must not disturb the session's."""
    c = new_cluster()
    try:
        c.start_servers()
        c.start_core()
        c.start_cm()
        yield c
    finally:
        c.stop()


async def _login(cluster: Cluster, jid: str, pw: str, resource: str) -> RawClient:
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    await raw_login(raw, jid, pw, resource)
    return raw


async def _logs_in_again(cluster: Cluster, jid: str, pw: str) -> bool:
    """After the flush the services take their partitions again; until then a login may be
    refused for a moment (the session table's Redis keys are gone, its leases too)."""
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        bound = await raw_login(raw, jid, pw, "probe")
        return b'type="result"' in bound
    except (PermissionError, TimeoutError, ConnectionError):
        return False
    finally:
        await raw.close()


async def test_flushall_loses_no_durable_data(flushed: Cluster) -> None:
    users = await Users(flushed).open()
    try:
        alice, pw_a = await users.create("alice")
        bob, pw_b = await users.create("bob")
        carol, _ = await users.create("carol")
        a = await _login(flushed, alice, pw_a, "desk")
        try:
            sets = {
                "v": "<vCard xmlns='vcard-temp'><FN>Alice Durable</FN></vCard>",
                "p": "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'>"
                     "<theme>dark</theme></prefs></query>",
                "b": f"<block xmlns='urn:xmpp:blocking'><item jid='{carol}'/></block>",
                "r": f"<query xmlns='jabber:iq:roster'><item jid='{bob}' name='Bob'>"
                     "<group>Friends</group></item></query>",
            }
            for sid, child in sets.items():
                reply = await ask_iq(a, f"<iq type='set' id='{sid}'>{child}</iq>", sid)
                assert b'type="result"' in reply, reply
            await a.send(f"<message to='{bob}' type='chat' id='m1'><body>kept for you</body>"
                         "</message>".encode())
            await eventually(lambda: _count_is(users, bob, 1), 10, "offline message stored")

            await users.redis.flushall()  # alice online, bob and carol offline
            assert await users.redis.dbsize() == 0
        finally:
            await a.close()

        await eventually(lambda: _logs_in_again(flushed, alice, pw_a), 30, "logins again")
        a = await _login(flushed, alice, pw_a, "desk")
        try:
            vcard = await ask_iq(a, "<iq type='get' id='v2'><vCard xmlns='vcard-temp'/></iq>", "v2")
            assert b"<FN>Alice Durable</FN>" in vcard
            private = await ask_iq(
                a, "<iq type='get' id='p2'><query xmlns='jabber:iq:private'>"
                   "<prefs xmlns='urn:example:prefs'/></query></iq>", "p2")
            assert b"<theme>dark</theme>" in private
            blocked = await ask_iq(
                a, "<iq type='get' id='b2'><blocklist xmlns='urn:xmpp:blocking'/></iq>", "b2")
            assert f'jid="{carol}"'.encode() in blocked
            roster = await ask_iq(
                a, "<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>", "r2")
            assert f'jid="{bob}"'.encode() in roster and b"<group>Friends</group>" in roster
        finally:
            await a.close()

        b = await _login(flushed, bob, pw_b, "back")
        try:
            await b.send(b"<presence/>")  # XEP-0160: stored messages come after it
            got = await b.read_until(b"kept for you", timeout=15)
            assert f'from="{alice}/desk"'.encode() in got
        finally:
            await b.close()
        assert await users.offline.count(bob) == 0
    finally:
        await users.close()


async def _count_is(users: Users, bare: str, n: int) -> bool:
    return await users.offline.count(bare) == n
