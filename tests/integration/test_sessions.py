"""Sessions against the running cluster: replacement, server IQs, registration, metrics."""

from __future__ import annotations

import asyncio
import base64

from shared.store import keys
from tests.conftest import Users
from tests.support.cluster import Cluster
from tests.support.xmpp import Client, RawClient, raw_login


async def test_rfc6120_7_7_2_2_same_full_jid_replaces_the_old_session_with_conflict(
    cluster: Cluster, users: Users
) -> None:
    jid, pw = await users.create()
    first = RawClient("127.0.0.1", cluster.c2s_port)
    second = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        assert b"<jid>" in await raw_login(first, jid, pw, resource="phone")
        assert b"<jid>" in await raw_login(second, jid, pw, resource="phone")
        kicked = await first.read_all()
        assert b"<conflict xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\"/>" in kicked
        sessions = await users.redis.hgetall(keys.sessions(jid))
        assert list(sessions) == [b"phone"]  # the new session stays bound
        await second.send(b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert b'type="result"' in await second.read_until(b'id="p1"')
    finally:
        await first.close()
        await second.close()


async def test_xep0030_xep0199_xep0092_server_iqs(cluster: Cluster, users: Users) -> None:
    jid, pw = await users.create()
    client = Client(jid + "/iq", pw)
    await client.login("127.0.0.1", cluster.c2s_port)
    client.register_plugin("xep_0030")
    client.register_plugin("xep_0092")
    try:
        info = await client.plugin["xep_0030"].get_info(jid="localhost", timeout=10)
        features = set(info["disco_info"]["features"])
        assert {"urn:xmpp:ping", "jabber:iq:version",
                "http://jabber.org/protocol/disco#info"} <= features
        assert ("server", "im") in {(i[0], i[1]) for i in info["disco_info"]["identities"]}
        rtt = await client.plugin["xep_0199"].ping(jid="localhost", timeout=10)
        assert rtt is not None
        version = await client.plugin["xep_0092"].get_version("localhost", timeout=10)
        assert version["software_version"]["name"] == "stanzad"
    finally:
        await client.logout()


async def test_rfc6120_8_4_unknown_server_iq_is_service_unavailable(
    cluster: Cluster, users: Users
) -> None:
    jid, pw = await users.create()
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(raw, jid, pw)
        await raw.send(b"<iq type='get' id='q1'><query xmlns='urn:example:nothing'/></iq>")
        reply = await raw.read_until(b"</iq>")
        assert b'type="error"' in reply and b"<service-unavailable" in reply
    finally:
        await raw.close()


async def test_xep0077_in_band_registration_then_login(cluster: Cluster, users: Users) -> None:
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    import secrets

    name = f"newbie{secrets.token_hex(3)}"
    sender_jid, sender_pw = await users.create()
    sender = Client(f"{sender_jid}/s", sender_pw)
    await sender.login("127.0.0.1", cluster.c2s_port)
    sender.send_message(mto=f"{name}@localhost", mbody="too early", mtype="chat")
    early = await asyncio.wait_for(sender.messages.get(), 10)  # now cached as "no account"
    assert early["error"]["condition"] == "service-unavailable"
    try:
        await raw.open()
        await raw.starttls()
        await raw.send(raw.header())
        features = await raw.read_until(b"</stream:features>")
        assert b"http://jabber.org/features/iq-register" in features
        await raw.send(
            b"<iq type='set' id='r1'><query xmlns='jabber:iq:register'>"
            + f"<username>{name}</username><password>new-pw</password></query></iq>".encode()
        )
        assert b'type="result"' in await raw.read_until(b"r1")
        await raw.send(
            b"<iq type='set' id='r2'><query xmlns='jabber:iq:register'>"
            + f"<username>{name}</username><password>x</password></query></iq>".encode()
        )
        assert b"<conflict" in await raw.read_until(b"</iq>")
        # the registration told the routers: kept offline at once, not refused for 30 s
        sender.send_message(mto=f"{name}@localhost", mbody="welcome", mtype="chat")
    finally:
        await raw.close()
    client = Client(f"{name}@localhost/r", "new-pw")
    await client.login("127.0.0.1", cluster.c2s_port)
    try:
        got = await asyncio.wait_for(client.messages.get(), 10)
        assert got["body"] == "welcome"
        assert sender.messages.empty()
    finally:
        await client.logout()
        await sender.logout()


async def test_scram_sha_1_and_plain_logins_work(cluster: Cluster, users: Users) -> None:
    for mech in ("SCRAM-SHA-1", "PLAIN"):
        jid, pw = await users.create()
        client = Client(jid + "/m", pw, mech=mech)
        await client.login("127.0.0.1", cluster.c2s_port)
        await client.logout()
    metrics = cluster.metrics("cm-1")
    assert 'stanzad_cm_logins_total{mechanism="SCRAM-SHA-1",result="success"}' in metrics
    assert 'stanzad_cm_logins_total{mechanism="PLAIN",result="success"}' in metrics


async def test_rfc6120_6_4_forged_authzid_is_refused(cluster: Cluster, users: Users) -> None:
    jid, pw = await users.create()
    other, _ = await users.create()
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw.open()
        await raw.starttls()
        await raw.send(raw.header())
        await raw.read_until(b"</stream:features>")
        token = base64.b64encode(f"{other}\0{jid.partition('@')[0]}\0{pw}".encode()).decode()
        await raw.send(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
            .encode()
        )
        assert b"<invalid-authzid/>" in await raw.read_until(b"</failure>")
    finally:
        await raw.close()


async def test_metrics_and_health_endpoints(cluster: Cluster) -> None:
    text = await asyncio.to_thread(cluster.metrics, "router-1")
    assert "stanzad_router_partitions" in text
    text = await asyncio.to_thread(cluster.metrics, "cm-1")
    assert "stanzad_cm_connections" in text


async def test_rfc6120_s7_bind_unbind_and_the_cm_index_after_redis_lost_its_scripts(
    users: Users,
) -> None:
    """A Redis that forgot the scripts (SCRIPT FLUSH, a restart) gets them loaded again; the
    connection manager's index (written per tick) follows bind and unbind."""
    from shared.store.sessions import SessionRecord, SessionStore

    store = SessionStore(users.redis, "tests")
    jid, _ = await users.create()
    full = f"{jid}/flush"
    record = SessionRecord("cm-flushtest", "s1", 0, False)
    for _ in range(2):
        await users.redis.script_flush()
        result = await store.bind(full, record, 10)
        assert result.version > 0
        assert full in await store.cm_sessions("cm-flushtest")
        await users.redis.script_flush()
        assert await store.unbind(full, record) > 0
        assert full not in await store.cm_sessions("cm-flushtest")
        assert await store.get(jid) == {}


async def test_rfc6120_7_7_2_2_replaced_session_leaves_the_new_one_in_the_cm_index(
    users: Users,
) -> None:
    """A full JID bound again on the same connection manager (the older session gets
    <conflict/>): the old session's unbind must not take the new one out of the index, or
    the reaper would never clear the new session if that connection manager died."""
    from shared.store.sessions import SessionRecord, SessionStore

    store = SessionStore(users.redis, "tests")
    jid, _ = await users.create()
    full = f"{jid}/twice"
    old, new = SessionRecord("cm-rebind", "s1"), SessionRecord("cm-rebind", "s2")
    await store.bind(full, old, 10)
    replaced = await store.bind(full, new, 10)
    assert replaced.replaced == old
    assert await store.unbind(full, old) == 0  # no longer its resource
    assert full in await store.cm_sessions("cm-rebind")
    assert await store.unbind(full, new) > 0
    assert full not in await store.cm_sessions("cm-rebind")


async def test_xep0198_5_move_is_a_compare_and_set_that_keeps_the_record(
    users: Users,
) -> None:
    """A take-over's commit point: the record names the new connection manager, with the
    same session id, priority and availability; it fails once a new bind took the JID."""
    from shared.store.sessions import SessionRecord, SessionStore

    store = SessionStore(users.redis, "tests")
    jid, _ = await users.create()
    full = f"{jid}/moving"
    await store.bind(full, SessionRecord("cm-old", "s1", 5, True), 10)
    moved = await store.move(full, "cm-old s1", "cm-new")
    assert moved is not None and moved.replaced == SessionRecord("cm-new", "s1", 5, True)
    assert (await store.get(jid))["moving"] == SessionRecord("cm-new", "s1", 5, True)
    assert full in await store.cm_sessions("cm-new")
    assert await store.move(full, "cm-old s1", "cm-other") is None  # not its owner any more
    await store.bind(full, SessionRecord("cm-new", "s2", 0, False), 10)  # a new bind
    assert await store.move(full, "cm-new s1", "cm-other") is None
    assert (await store.get(jid))["moving"].session_id == "s2"


async def test_restore_writes_a_lost_record_back_but_never_over_a_newer_bind(
    users: Users,
) -> None:
    """After Redis lost the session table (restarted empty), a connection manager writes
    the sessions still bound on it again: where the resource has no record (with the
    carbons flag and its index entry), never over the record of a newer bind."""
    from shared.store.sessions import SessionRecord, SessionStore

    store = SessionStore(users.redis, "tests")
    jid, _ = await users.create()
    full = f"{jid}/kept"
    mine = SessionRecord("cm-restore", "s1", 0, True, carbons=True)
    assert await store.restore(full, mine) > 0  # no record: written
    assert (await store.get(jid))["kept"] == mine
    assert full in await store.cm_sessions("cm-restore")
    await store.bind(full, SessionRecord("cm-other", "s2", 0, False), 10)  # a newer bind
    assert await store.restore(full, mine) == 0
    assert (await store.get(jid))["kept"].owner == "cm-other s2"
