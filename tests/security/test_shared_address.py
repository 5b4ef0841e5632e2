"""Many users behind one address (carrier-grade NAT, offices, a load balancer): what one of
them does must not lock the others out (XEP-0205, RFC 6120 §13.12), and behind a trusted
load balancer the PROXY protocol gives every limit, log line and session listing the
client's own address.  Every test here comes from one loopback address of its own."""

from __future__ import annotations

import asyncio
import time

from shared.cluster import proxy_protocol
from shared.cluster.admin import ClusterAdmin
from shared.xmpp.credentials import derive_credentials
from tests.conftest import TEST_ITERATIONS, Users
from tests.support.cluster import Cluster, metric_value
from tests.support.xmpp import Client, RawClient, new_source, raw_login

HOST = "127.0.0.1"


async def _auth(port: int, source: str, jid: str, password: str) -> bytes:
    raw = RawClient(HOST, port, source=source)
    try:
        await raw.open()
        await raw.starttls()
        return await raw.auth_plain(jid, password)
    finally:
        await raw.close()


async def test_xep0205_30_wrong_passwords_for_a_do_not_lock_b_out_and_a_waits_the_delay(
    cluster: Cluster, tight_cm: int, users: Users
) -> None:
    """cm-tight: 3 free failures per (account, address), then 1 s, 2 s at most."""
    (a, a_pw), (b, b_pw) = await users.create(), await users.create()
    source = new_source()
    outcomes: dict[str, int] = {}
    for _ in range(30):
        reply = await _auth(tight_cm, source, a, "wrong")
        kind = "locked" if b"<temporary-auth-failure/>" in reply else "failed"
        assert b"<success" not in reply
        outcomes[kind] = outcomes.get(kind, 0) + 1
    print(f"30 wrong passwords for A: {outcomes}")
    started = time.monotonic()
    client = Client(b + "/b", b_pw, source=source)
    await client.login(HOST, tight_cm)  # B at once, with its password
    print(f"B logged in {time.monotonic() - started:.2f} s after A's 30 failures")
    await client.logout()
    await asyncio.sleep(2.2)  # STANZAD_AUTH_PAIR_MAX_DELAY_S=2, the documented longest delay
    owner = Client(a + "/a", a_pw, source=source)
    await owner.login(HOST, tight_cm)
    await owner.logout()


async def test_rfc6120_13_12_500_unauthenticated_then_a_client_from_the_address_logs_in(
    cluster: Cluster, users: Users
) -> None:
    """cm-1 with the default STANZAD_MAX_CONNECTIONS_PER_IP=100: the 500 idle connections
    evict their own oldest; the real client evicts one more and logs in."""
    source = new_source()
    port = cluster.c2s_port
    before = metric_value(cluster.metrics("cm-1"), "stanzad_cm_connections_refused_total",
                          reason="per_ip")
    idle = [RawClient(HOST, port, source=source) for _ in range(500)]
    try:
        for raw in idle:
            await raw.open()
            await raw.send(raw.header())
        await idle[-1].read_until(b"</stream:features>")
        jid, pw = await users.create()
        started = time.monotonic()
        client = Client(jid + "/real", pw, source=source)
        await client.login(HOST, port, timeout=20)  # a hang guard
        print(f"logged in {time.monotonic() - started:.2f} s after 500 idle connections")
        await client.logout()
        await idle[0].expect_stream_error("policy-violation")
    finally:
        await asyncio.gather(*(raw.close() for raw in idle))
    evicted = metric_value(cluster.metrics("cm-1"), "stanzad_cm_connections_refused_total",
                           reason="per_ip") - before
    assert evicted >= 401, evicted


async def test_rfc6120_13_12_1000_sessions_of_different_accounts_from_one_address(
    cluster: Cluster, users: Users
) -> None:
    source = new_source()
    creds = derive_credentials("pw-1000", TEST_ITERATIONS)
    await users.open()
    stamp = int(time.time() * 1000) % 1_000_000
    jids = [f"many{stamp}-{i}@{cluster.domain}" for i in range(1000)]
    created = await users.accounts.create_many([(jid, creds) for jid in jids])
    assert all(created)
    clients = [RawClient(HOST, cluster.c2s_port, source=source) for _ in jids]
    started = time.monotonic()
    try:
        results: list[bytes] = []
        for i in range(0, len(jids), 50):  # 50 logins in flight at a time
            results += await asyncio.gather(*(
                raw_login(c, j, "pw-1000") for c, j in zip(clients[i : i + 50],
                                                        jids[i : i + 50], strict=True)
            ))
        assert all(b"<jid>" in r for r in results)
        print(f"1000 sessions from {source} in {time.monotonic() - started:.1f} s")
        last = clients[-1]  # all still open: the first one is served too
        await clients[0].send(b"<iq type='get' id='alive' to='localhost'>"
                              b"<ping xmlns='urn:xmpp:ping'/></iq>")
        assert b'id="alive"' in await clients[0].read_until(b'id="alive"')
        assert last.writer is not None and not last.writer.is_closing()
    finally:
        await asyncio.gather(*(c.close() for c in clients))


def _proxy_source() -> str:
    """A loopback address inside PROXY_NETWORK (the trusted load balancers)."""
    return f"127.0.99.{new_source().rsplit('.', 1)[1]}"


async def _proxied(port: int, header: bytes, source: str | None = None) -> RawClient:
    raw = RawClient(HOST, port, source=source or _proxy_source(), preamble=header)
    await raw.open()
    return raw


async def test_proxy_protocol_v1_and_v2_from_a_trusted_network_set_the_client_address(
    cluster: Cluster, proxy_cm: int, users: Users
) -> None:
    jid, pw = await users.create()
    dst = ("10.0.0.5", 5222)
    v1 = RawClient(HOST, proxy_cm, source=_proxy_source(),
                   preamble=proxy_protocol.v1(("198.51.100.7", 40001), dst))
    v2 = RawClient(HOST, proxy_cm, source=_proxy_source(),
                   preamble=proxy_protocol.v2(("2001:db8::7", 40002), ("2001:db8::5", 5222)))
    await users.open()
    admin = ClusterAdmin(users.redis, users.db, cluster.domain, 64, "tests")
    try:
        # login over the header: the session listing shows the client's address
        assert b"<jid>" in await raw_login(v1, jid, pw, resource="v1")
        assert b"<jid>" in await raw_login(v2, jid, pw, resource="v2")
        listed = {s.jid: s.address for s in await admin.sessions() if s.cm_id == "cm-proxy"}
        assert listed[f"{jid}/v1"] == "198.51.100.7:40001"
        assert listed[f"{jid}/v2"] == "2001:db8::7:40002"
        # logs: a failure names the client's address
        bad = await _proxied(proxy_cm, proxy_protocol.v1(("198.51.100.8", 1), dst))
        await bad.starttls()
        assert b"<not-authorized/>" in await bad.auth_plain(jid, "wrong")
        await bad.close()
        assert "authentication failed from 198.51.100.8:1" in cluster.log("cm-proxy")
        # limits: STANZAD_MAX_CONNECTIONS_PER_IP=2 counts the client's address, whichever
        # proxy it came through
        same = [await _proxied(proxy_cm, proxy_protocol.v2(("203.0.113.9", 1000 + i), dst))
                for i in range(3)]
        other = await _proxied(proxy_cm, proxy_protocol.v1(("203.0.113.10", 1), dst))
        for raw in [*same, other]:
            await raw.send(raw.header())
        await same[0].expect_stream_error("policy-violation")
        for raw in [*same[1:], other]:
            assert b"<stream:features>" in await raw.read_until(b"</stream:features>")
        for raw in [*same, other]:
            await raw.close()
    finally:
        await v1.close()
        await v2.close()


async def test_proxy_protocol_is_refused_from_an_untrusted_network_and_required_from_a_trusted(
    cluster: Cluster, proxy_cm: int
) -> None:
    header = proxy_protocol.v1(("198.51.100.7", 40001), ("10.0.0.5", 5222))
    untrusted = await _proxied(proxy_cm, header, source=new_source())  # not 127.0.99.0/24
    try:
        await untrusted.expect_stream_error("policy-violation")
    finally:
        await untrusted.close()
    for header in (proxy_protocol.v2(("198.51.100.7", 1), ("10.0.0.5", 5222)),
                   proxy_protocol.v1(("198.51.100.7", 1), ("10.0.0.5", 5222))):
        untrusted = await _proxied(cluster.c2s_port, header, source=new_source())
        try:  # no proxy is trusted on cm-1
            await untrusted.expect_stream_error("policy-violation")
        finally:
            await untrusted.close()
    trusted = RawClient(HOST, proxy_cm, source=_proxy_source())
    try:  # from a trusted proxy, the header is required
        await trusted.open()
        await trusted.send(trusted.header())
        await trusted.expect_stream_error("policy-violation")
    finally:
        await trusted.close()
    metrics = cluster.metrics("cm-proxy")
    assert metric_value(metrics, "stanzad_cm_connections_refused_total",
                        reason="proxy_untrusted") >= 1
    assert metric_value(metrics, "stanzad_cm_connections_refused_total",
                        reason="proxy_invalid") >= 1


async def test_rfc6120_13_12_a_1_mib_attribute_is_refused_while_it_arrives(
    cluster: Cluster, users: Users
) -> None:
    """cm-1: 256 KiB stanzas, 4096-character attribute values, 10 KiB/s with a 32 KiB burst.
    The value is refused once no legal value can be that long (40 KiB), not when the stanza
    allowance has been read."""
    jid, pw = await users.create()
    raw = RawClient(HOST, cluster.c2s_port, source=new_source())
    try:
        await raw_login(raw, jid, pw)
        before = metric_value(cluster.metrics("cm-1"), "stanzad_cm_received_bytes_total")
        started = time.monotonic()
        assert raw.writer is not None
        raw.writer.write(b"<message to='" + b"a" * (1 << 20))  # not drained: the server reads
        data = await raw.read_all(timeout=30)  # a hang guard
        elapsed = time.monotonic() - started
        assert b"<policy-violation" in data
        read = metric_value(cluster.metrics("cm-1"), "stanzad_cm_received_bytes_total") - before
        print(f"refused after the server read {read / 1024:.0f} KiB, {elapsed:.2f} s after "
              "the value began (limit crossed at 40 KiB)")
        assert read < 128 * 1024, read  # well under the 256 KiB stanza allowance
    finally:
        if raw.writer is not None:
            raw.writer.transport.abort()


S2S_HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
              b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")


async def test_proxy_protocol_on_the_s2s_listener(cluster: Cluster) -> None:
    """STANZAD_S2S_PROXY_PROTOCOL_NETWORKS: the per-address limit of the s2s gateway counts
    the address the header names; a header from anyone else closes the connection."""
    port = cluster.start_s2s("s2s-proxy", STANZAD_S2S_PROXY_PROTOCOL_NETWORKS="127.0.99.0/24",
                             STANZAD_S2S_MAX_CONNECTIONS_PER_IP="1")
    dst = ("10.0.0.5", 5269)
    first = RawClient(HOST, port, source=_proxy_source(),
                      preamble=proxy_protocol.v2(("192.0.2.50", 1), dst))
    same = RawClient(HOST, port, source=_proxy_source(),
                     preamble=proxy_protocol.v1(("192.0.2.50", 2), dst))
    other = RawClient(HOST, port, source=_proxy_source(),
                      preamble=proxy_protocol.v1(("192.0.2.51", 1), dst))
    untrusted = RawClient(HOST, port, source=new_source(),
                          preamble=proxy_protocol.v1(("192.0.2.52", 1), dst))
    try:
        await first.open()
        await first.send(S2S_HEADER)
        assert b"<stream:features" in await first.read_until(b"</stream:features>")
        await same.open()  # STANZAD_S2S_MAX_CONNECTIONS_PER_IP=1 for 192.0.2.50
        await same.send(S2S_HEADER)
        assert b"<policy-violation" in await same.read_all()
        await other.open()
        await other.send(S2S_HEADER)
        assert b"<stream:features" in await other.read_until(b"</stream:features>")
        await untrusted.open()
        assert await untrusted.read_all() == b""  # closed without a word
    finally:
        for raw in (first, same, other, untrusted):
            await raw.close()
    assert metric_value(cluster.metrics("s2s-proxy"), "stanzad_s2s_connections_refused_total",
                        reason="proxy") >= 1
