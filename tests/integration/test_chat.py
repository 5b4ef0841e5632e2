"""Two real clients (slixmpp) chatting through a real cluster (RFC 6120, RFC 6121 §8.5)."""

from __future__ import annotations

import asyncio

import pytest

from shared.store import keys
from tests.conftest import Users
from tests.support.cluster import Cluster, metric_value
from tests.support.xmpp import Client, RawClient, eventually, raw_login

N_MESSAGES = 500


async def _online(cluster: Cluster, users: Users, n: int = 2) -> list[tuple[Client, str]]:
    clients = []
    for _ in range(n):
        jid, pw = await users.create()
        c = Client(jid + "/test", pw)
        await c.login("127.0.0.1", cluster.c2s_port)
        clients.append((c, jid))
    await _wait_available(users, [jid for _, jid in clients])
    return clients


async def _wait_available(users: Users, bare_jids: list[str], timeout: float = 10) -> None:
    """Initial presence makes a session available to the router (RFC 6121 §4.2)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for bare in bare_jids:
        while True:
            sessions = await users.redis.hgetall(keys.sessions(bare))
            if any(v.decode().endswith(" 1") for v in sessions.values()):
                break
            if loop.time() > deadline:
                raise TimeoutError(f"{bare} never became available")
            await asyncio.sleep(0.05)


async def test_two_users_exchange_500_messages_each_way_in_order(
    cluster: Cluster, users: Users
) -> None:
    (alice, alice_jid), (bob, bob_jid) = await _online(cluster, users)
    assert alice.used_mech == "SCRAM-SHA-256"
    try:
        for i in range(N_MESSAGES):
            alice.send_message(mto=bob_jid, mbody=f"a{i}", mtype="chat")
            bob.send_message(mto=alice_jid, mbody=f"b{i}", mtype="chat")

        async def collect(client: Client, n: int) -> list[str]:
            bodies = []
            while len(bodies) < n:
                msg = await asyncio.wait_for(client.messages.get(), 30)
                if msg["type"] == "error":
                    raise AssertionError(f"error stanza: {msg}")
                bodies.append(msg["body"])
            return bodies

        got_bob, got_alice = await asyncio.gather(
            collect(bob, N_MESSAGES), collect(alice, N_MESSAGES)
        )
        assert got_bob == [f"a{i}" for i in range(N_MESSAGES)]
        assert got_alice == [f"b{i}" for i in range(N_MESSAGES)]
        count = next(
            float(line.split()[-1])
            for line in cluster.metrics("cm-1").splitlines()
            if line.startswith("stanzad_cm_routing_latency_seconds_count")
        )
        assert count >= 2 * N_MESSAGES
    finally:
        await alice.logout()
        await bob.logout()


async def test_sessions_idle_past_hibernation_chat_on_in_order(
    cluster: Cluster, users: Users
) -> None:
    """STANZAD_HIBERNATE_AFTER_S (0.5 s here): an idle session's parser is freed and rebuilt
    at its next byte; the stream must not notice, whatever the peer sends next."""
    before = metric_value(cluster.metrics("cm-1"), "stanzad_cm_parsers_hibernated_total")
    (alice, alice_jid), (bob, bob_jid) = await _online(cluster, users)
    try:
        for round_ in range(3):
            await eventually(
                lambda n=round_: metric_value(
                    cluster.metrics("cm-1"), "stanzad_cm_parsers_hibernated_total"
                )
                >= before + 2 * (n + 1),
                timeout=15,
            )
            for i in range(5):
                alice.send_message(mto=bob_jid, mbody=f"r{round_}a{i}", mtype="chat")
                bob.send_message(mto=alice_jid, mbody=f"r{round_}b{i}", mtype="chat")
            for client, side in ((bob, "a"), (alice, "b")):
                got = [(await asyncio.wait_for(client.messages.get(), 15))["body"] for _ in "12345"]
                assert got == [f"r{round_}{side}{i}" for i in range(5)]
    finally:
        await alice.logout()
        await bob.logout()


async def test_rfc6121_8_5_1_message_to_missing_account_is_service_unavailable(
    cluster: Cluster, users: Users
) -> None:
    [(alice, _)] = await _online(cluster, users, 1)
    try:
        alice.send_message(mto="nobody-here@localhost", mbody="hello?", mtype="chat")
        msg = await asyncio.wait_for(alice.messages.get(), 10)
        assert msg["type"] == "error"
        assert msg["error"]["condition"] == "service-unavailable"
        assert msg["from"].bare == "nobody-here@localhost"
    finally:
        await alice.logout()


async def test_rfc6120_8_1_2_1_spoofed_from_never_reaches_the_recipient(
    cluster: Cluster, users: Users
) -> None:
    [(bob, bob_jid)] = await _online(cluster, users, 1)
    mallory_jid, pw = await users.create("mallory")
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(raw, mallory_jid, pw)
        await raw.send(
            f"<message to='{bob_jid}' from='{bob_jid}/other' type='chat'>"
            "<body>spoofed</body></message>".encode()
        )
        reply = await raw.read_all()
        assert b"<invalid-from" in reply
        assert reply.endswith(b"</stream:stream>")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(bob.messages.get(), 1.5)
    finally:
        await raw.close()
        await bob.logout()


async def test_rfc6120_6_5_10_wrong_password_is_not_authorized(
    cluster: Cluster, users: Users
) -> None:
    jid, _ = await users.create()
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        with pytest.raises(PermissionError) as failure:
            await raw_login(raw, jid, "wrong-password")
        assert "<not-authorized/>" in str(failure.value)
    finally:
        await raw.close()
    client = Client(jid + "/x", "wrong-password")
    with pytest.raises(PermissionError):
        await client.login("127.0.0.1", cluster.c2s_port, timeout=10)
    await client.logout()


async def test_rfc6120_4_9_3_12_malformed_xml_gets_stream_error_and_others_go_on(
    cluster: Cluster, users: Users
) -> None:
    (alice, _), (bob, bob_jid) = await _online(cluster, users)
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw.open()
        await raw.send(raw.header() + b"<message><body>unclosed</message>")
        reply = await raw.read_all()
        assert b"<not-well-formed" in reply
        alice.send_message(mto=bob_jid, mbody="still here", mtype="chat")
        msg = await asyncio.wait_for(bob.messages.get(), 10)
        assert msg["body"] == "still here"
    finally:
        await raw.close()
        await alice.logout()
        await bob.logout()


async def test_session_table_is_empty_after_logout(cluster: Cluster, users: Users) -> None:
    (alice, alice_jid), (bob, bob_jid) = await _online(cluster, users)
    assert await users.redis.hlen(keys.sessions(alice_jid)) == 1
    await alice.logout()
    await bob.logout()

    async def indexed() -> bool:
        members = {m.decode() for m in await users.redis.smembers(keys.cm_sessions("cm-1"))}
        return any(m.startswith((alice_jid, bob_jid)) for m in members)

    async def gone() -> bool:
        left = await users.redis.hlen(keys.sessions(alice_jid)) + await users.redis.hlen(
            keys.sessions(bob_jid)
        )
        return left == 0 and not await indexed()

    await eventually(gone, 10, "session table and index empty")
    assert await users.redis.hlen(keys.sessions(alice_jid)) == 0
    assert await users.redis.hlen(keys.sessions(bob_jid)) == 0
    assert not await indexed()
