"""Federation between two stanzad clusters on loopback (RFC 6120 §13, RFC 6121, XEP-0220,
XEP-0178, XEP-0368): a.example and b.example, each with its own NATS, Redis and services.

They find each other through DNS only (RFC 6120 §3.2.1): a DNS server of the test, asked by
dnspython (STANZAD_S2S_DNS_SERVERS), holds _xmpp-server._tcp for a.example and both
_xmpps-server._tcp (direct TLS, first) and _xmpp-server._tcp for b.example, so a reaches b
over direct TLS and b reaches a with STARTTLS.  Each trusts the other's self-signed
certificate for its domain (STANZAD_S2S_TRUSTED_CERTS), so both streams authenticate with
SASL EXTERNAL; peers without such a certificate still get dialback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devtools import localservers
from shared.bus import subjects
from shared.cluster.partitions import assign
from shared.store import keys
from shared.tls.context import ensure_self_signed
from shared.xmpp.dialback import dialback_key
from shared.xmpp.subscription import Subscription
from tests.conftest import Users
from tests.support.cluster import Cluster, metric_value, new_cluster
from tests.support.dns import DNSServer
from tests.support.xmpp import Client, RawClient, eventually, raw_login

A, B = "a.example", "b.example"
AUTH = "stanzad_s2s_authentications_total"


def _cert(c: Cluster) -> Path:
    return c.workdir / "tls" / "s2s-cert.pem"


@pytest.fixture(scope="module")
async def dns_server() -> AsyncIterator[DNSServer]:
    a_port, b_port, b_tls = (localservers.free_port() for _ in range(3))
    dead_port = localservers.free_port()  # nobody listens: nowhere.example is unreachable
    server = DNSServer({
        (f"_xmpp-server._tcp.{A}", "SRV"): [f"0 5 {a_port} gw.{A}."],
        (f"gw.{A}", "A"): ["127.0.0.1"],
        (f"_xmpps-server._tcp.{B}", "SRV"): [f"0 5 {b_tls} gw.{B}."],
        (f"_xmpp-server._tcp.{B}", "SRV"): [f"10 5 {b_port} gw.{B}."],
        (f"gw.{B}", "A"): ["127.0.0.1"],
        ("_xmpp-server._tcp.nowhere.example", "SRV"): [f"0 5 {dead_port} nowhere.example."],
        ("nowhere.example", "A"): ["127.0.0.1"],
    })
    server.ports = {"a": a_port, "b": b_port, "b_tls": b_tls}  # type: ignore[attr-defined]
    await server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clusters(dns_server: DNSServer) -> Iterator[tuple[Cluster, Cluster]]:
    a, b = new_cluster(A), new_cluster(B)
    ports = dns_server.ports  # type: ignore[attr-defined]
    dns = f"127.0.0.1:{dns_server.port}"
    for c in (a, b):
        ensure_self_signed(str(_cert(c)), str(c.workdir / "tls" / "s2s-key.pem"), c.domain)
    try:
        for c in (a, b):
            c.start_servers()
        for c in (a, b):
            c.spawn_core()  # every service of both clusters first, then wait for all
        a.start_s2s(port=ports["a"], wait=False, STANZAD_S2S_DNS_SERVERS=dns,
                    STANZAD_S2S_TRUSTED_CERTS=f"{B}={_cert(b)}")
        b.start_s2s(port=ports["b"], wait=False, STANZAD_S2S_DNS_SERVERS=dns,
                    STANZAD_S2S_TRUSTED_CERTS=f"{A}={_cert(a)}",
                    STANZAD_S2S_DIRECT_TLS_PORT=str(ports["b_tls"]),
                    STANZAD_S2S_MAX_STANZAS_PER_S="100")
        for c in (a, b):
            for name in ("router-1", "presence-1", "roster-1", "s2s-1"):
                c.wait_ready(name)
            c.start_cm()
        yield a, b
    finally:
        for c in (a, b):
            c.stop()


@pytest.fixture
async def users_ab(clusters: tuple[Cluster, Cluster]) -> AsyncIterator[tuple[Users, Users]]:
    ua, ub = Users(clusters[0]), Users(clusters[1])
    yield ua, ub
    await ua.close()
    await ub.close()


async def _login(cluster: Cluster, jid: str, pw: str, resource: str) -> Client:
    client = Client(f"{jid}/{resource}", pw)
    await client.login("127.0.0.1", cluster.c2s_port)
    return client


async def _bodies(client: Client, n: int, timeout: float = 15) -> list[str]:
    out = []
    for _ in range(n):
        msg = await asyncio.wait_for(client.messages.get(), timeout)
        out.append(str(msg["body"]))
    return out


async def test_rfc6120_10_1_messages_cross_domains_both_ways_in_order(
    clusters: tuple[Cluster, Cluster], users_ab: tuple[Users, Users]
) -> None:
    a, b = clusters
    alice, pw_a = await users_ab[0].create("alice")
    bob, pw_b = await users_ab[1].create("bob")
    ca = await _login(a, alice, pw_a, "laptop")
    cb = await _login(b, bob, pw_b, "phone")
    try:
        for i in range(10):
            ca.send_message(mto=bob, mbody=f"a{i}", mtype="chat")
        assert await _bodies(cb, 10, 20) == [f"a{i}" for i in range(10)]
        for i in range(10):
            cb.send_message(mto=f"{alice}/laptop", mbody=f"b{i}", mtype="chat")
        got = await _bodies(ca, 10)
        assert got == [f"b{i}" for i in range(10)]
    finally:
        await ca.logout()
        await cb.logout()
    # XEP-0178 both ways: each trusts the other's certificate for its domain
    metrics_a, metrics_b = a.metrics("s2s-1"), b.metrics("s2s-1")
    # one stream each way carried all ten (the link is reused)
    assert metric_value(metrics_a, AUTH, direction="out", mechanism="EXTERNAL") == 1
    assert metric_value(metrics_b, AUTH, direction="out", mechanism="EXTERNAL") == 1
    assert metric_value(metrics_a, AUTH, direction="in", mechanism="EXTERNAL") >= 1
    assert metric_value(metrics_b, AUTH, direction="in", mechanism="EXTERNAL") >= 1
    # a found b's direct TLS port through _xmpps-server._tcp (XEP-0368)
    assert metric_value(metrics_b, "stanzad_s2s_direct_tls_connections_total") >= 1


async def test_rfc6121_3_subscription_across_domains_completes_and_presence_flows(
    clusters: tuple[Cluster, Cluster], users_ab: tuple[Users, Users]
) -> None:
    a, b = clusters
    alice, pw_a = await users_ab[0].create("alice")
    bob, pw_b = await users_ab[1].create("bob")
    ca = await _login(a, alice, pw_a, "laptop")
    cb = await _login(b, bob, pw_b, "phone")
    try:
        await ca.get_roster()
        # slixmpp approves requests (auto_authorize) and subscribes back (auto_subscribe)
        ca.send_presence(pto=bob, ptype="subscribe")

        async def both() -> bool:
            ours = await users_ab[0].rosters.item(alice, bob)
            theirs = await users_ab[1].rosters.item(bob, alice)
            return (ours is not None and ours.state.subscription == Subscription.BOTH
                    and theirs is not None and theirs.state.subscription == Subscription.BOTH)

        await eventually(both, 20, "subscription both ways across domains")
        await eventually(lambda: ca.saw_presence(f"{bob}/phone")
                         and cb.saw_presence(f"{alice}/laptop"), 15, "presence both ways")
        cb.send_presence(pshow="away", pstatus="out")
        await eventually(lambda: ca.saw_presence(f"{bob}/phone", "away", "out"), 10,
                         "bob's away status reaches alice")
        await cb.logout()
        await eventually(lambda: ca.saw_presence(f"{bob}/phone", "unavailable"), 10,
                         "bob going offline reaches alice")
    finally:
        await ca.logout()
        await cb.logout()


async def test_rfc6120_8_3_3_16_unreachable_domain_bounces_remote_server_not_found(
    clusters: tuple[Cluster, Cluster], users_ab: tuple[Users, Users]
) -> None:
    a, _ = clusters
    bounces = ("stanzad_s2s_bounces_total", {"condition": "remote-server-not-found"})
    before = metric_value(a.metrics("s2s-1"), bounces[0], **bounces[1])
    alice, pw_a = await users_ab[0].create("alice")
    ca = await _login(a, alice, pw_a, "laptop")
    errors: asyncio.Queue[object] = asyncio.Queue()
    ca.add_event_handler("message_error", errors.put_nowait)
    try:
        ca.send_message(mto="someone@nowhere.example", mbody="hello?", mtype="chat")
        err = await asyncio.wait_for(errors.get(), 15)
        assert err["error"]["condition"] == "remote-server-not-found"  # type: ignore[index]
        assert str(err["from"]) == "someone@nowhere.example"  # type: ignore[index]
    finally:
        await ca.logout()
    assert metric_value(a.metrics("s2s-1"), bounces[0], **bounces[1]) - before == 1


async def _raw_dialback(
    b: Cluster, a: Cluster, secret: bytes, cert: tuple[Path, Path] | None = None,
    seen: list[bytes] | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Open an s2s stream to b.example as a.example (whose secret the test read from a's
    Redis), STARTTLS (presenting ``cert`` if given), dialback; b verifies the key with a's
    real gateway.  With ``seen``, the features after TLS and the answer to an attempt at
    SASL EXTERNAL are appended to it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", b.s2s_port)
    header = (
        f"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
        f"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
        f"from='{A}' to='{B}' version='1.0'>"
    ).encode()

    async def until(needle: bytes) -> bytes:
        buf = b""
        while needle not in buf:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            buf += chunk
        return buf

    writer.write(header)
    await until(b"</stream:features>")
    writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    await until(b"<proceed")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    await writer.start_tls(ctx)
    writer.write(header)
    opened = await until(b"</stream:features>")
    stream_id = opened.split(b' id="', 1)[1].split(b'"', 1)[0].decode()
    if seen is not None:
        seen.append(opened)
        writer.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>="
                     b"</auth>")
        seen.append(await until(b"</failure>"))
    key = dialback_key(secret, B, A, stream_id)
    writer.write(f"<db:result from='{A}' to='{B}'>{key}</db:result>".encode())
    result = await until(b"type=")
    return reader, writer, result


async def test_rfc6120_8_1_2_1_forged_from_domain_on_inbound_stream_is_invalid_from(
    clusters: tuple[Cluster, Cluster], users_ab: tuple[Users, Users]
) -> None:
    a, b = clusters
    secret = await users_ab[0].redis.get(keys.dialback_secret())
    assert secret, "a.example's gateway keeps its dialback secret in Redis"
    reader, writer, result = await _raw_dialback(b, a, bytes(secret))
    try:
        assert b"type='valid'" in result, result  # XEP-0220 §2.3: b asked a, a said valid
        writer.write(b"<message from='mallory@evil.example' to='bob@b.example'><body>x</body>"
                     b"</message>")
        rest = b""
        while b"</stream:stream>" not in rest:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            rest += chunk
        assert b"<invalid-from" in rest
    finally:
        writer.close()


async def test_xep0178_3_untrusted_certificate_gets_no_external_and_falls_back_to_dialback(
    clusters: tuple[Cluster, Cluster], users_ab: tuple[Users, Users], tmp_path: Path
) -> None:
    """A certificate for a.example that b does not trust (not the one configured for it):
    the handshake completes, EXTERNAL is not offered and refused with <not-authorized/>,
    dialback on the same stream succeeds."""
    a, b = clusters
    failures_before = metric_value(b.metrics("s2s-1"), "stanzad_s2s_auth_failures_total",
                                   mechanism="EXTERNAL")
    cert, key = tmp_path / "other.pem", tmp_path / "other.key"
    ensure_self_signed(str(cert), str(key), A)
    secret = await users_ab[0].redis.get(keys.dialback_secret())
    seen: list[bytes] = []
    _reader, writer, result = await _raw_dialback(b, a, bytes(secret), (cert, key), seen)
    try:
        features, refused = seen
        assert b"EXTERNAL" not in features and b"urn:xmpp:features:dialback" in features
        assert b"<not-authorized/>" in refused
        assert b"type='valid'" in result, result
        failures = metric_value(b.metrics("s2s-1"), "stanzad_s2s_auth_failures_total",
                                mechanism="EXTERNAL")
        assert failures - failures_before == 1  # failures are counted by mechanism
    finally:
        writer.close()


async def test_xep0220_2_3_key_for_a_wrong_secret_is_refused(
    clusters: tuple[Cluster, Cluster],
) -> None:
    a, b = clusters
    _reader, writer, result = await _raw_dialback(b, a, b"not the secret of a.example")
    try:
        assert b"type='invalid'" in result, result
    finally:
        writer.close()


async def test_rfc6120_13_12_inbound_stanza_rate_is_limited_by_pausing_the_stream(
    clusters: tuple[Cluster, Cluster], users_ab: tuple[Users, Users]
) -> None:
    a, b = clusters
    bob, pw_b = await users_ab[1].create("bob")
    cb = await _login(b, bob, pw_b, "phone")
    secret = await users_ab[0].redis.get(keys.dialback_secret())
    _reader, writer, result = await _raw_dialback(b, a, bytes(secret))
    try:
        assert b"type='valid'" in result, result
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(b"".join(
            f"<message from='ann@{A}/x' to='{bob}' type='chat'><body>{i}</body></message>"
            .encode() for i in range(300)
        ))
        got = await _bodies(cb, 300, 20)
        assert got == [str(i) for i in range(300)]  # all delivered, in order ...
        assert loop.time() - started > 1.5  # ... at about 100 a second after the first 100
        assert "stanzad_s2s_throttled_total 0.0" not in b.metrics("s2s-1")
    finally:
        writer.close()
        await cb.logout()


async def test_xep0191_blocking_a_remote_contact_both_ways(
    clusters: tuple[Cluster, Cluster], users_ab: tuple[Users, Users]
) -> None:
    """alice@a.example blocks bob@b.example: her messages to him are refused with
    <not-acceptable/> and <blocked/> (§3.5) before they reach the s2s gateway, his to her
    bounce with <service-unavailable/> across the federation (§3.4); after unblocking both
    flow again."""
    a, b = clusters
    alice, pw_a = await users_ab[0].create("alice")
    bob, pw_b = await users_ab[1].create("bob")
    blocked = {"kind": "message", "outcome": "blocked"}
    blocked_before = metric_value(a.metrics("router-1"), "stanzad_router_stanzas_total", **blocked)
    cb = await _login(b, bob, pw_b, "phone")
    errors: asyncio.Queue[object] = asyncio.Queue()
    cb.add_event_handler("message_error", errors.put_nowait)
    raw = RawClient("127.0.0.1", a.c2s_port, A)
    try:
        await raw_login(raw, alice, pw_a, resource="a")
        await raw.send(b"<presence/>")
        await raw.send(f"<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'>"
                       f"<item jid='{bob}'/></block></iq>".encode())
        await raw.read_until(b"</block></iq>")
        await raw.send(f"<message to='{bob}' type='chat' id='m1'><body>x</body></message>"
                       .encode())
        refused = await raw.read_until(b"</message>")
        assert b'type="error"' in refused and b"<not-acceptable" in refused
        assert b'<blocked xmlns="urn:xmpp:blocking:errors"/>' in refused
        # refused by a's router, before the s2s gateway (bob's first message below shows
        # that nothing reached him)
        assert metric_value(a.metrics("router-1"), "stanzad_router_stanzas_total",
                            **blocked) - blocked_before == 1

        cb.send_message(mto=f"{alice}/a", mbody="let me in", mtype="chat")
        err = await asyncio.wait_for(errors.get(), 15)
        assert err["error"]["condition"] == "service-unavailable"  # type: ignore[index]
        assert (await asyncio.wait_for(cb.messages.get(), 5))["type"] == "error"  # the same

        await raw.send(b"<iq type='set' id='b2'><unblock xmlns='urn:xmpp:blocking'/></iq>")
        await raw.read_until(b"</unblock></iq>")
        await raw.send(f"<message to='{bob}' type='chat' id='m2'><body>hi bob</body></message>"
                       .encode())
        assert await _bodies(cb, 1, 15) == ["hi bob"]  # the first bob gets: 'x' never came
        cb.send_message(mto=f"{alice}/a", mbody="hi alice", mtype="chat")
        assert b"hi alice" in await raw.read_until(b"hi alice", 15)
    finally:
        await raw.close()
        await cb.logout()


async def test_rfc6120_10_1_remote_domain_moves_between_gateways_and_traffic_goes_on(
    clusters: tuple[Cluster, Cluster], users_ab: tuple[Users, Users],
    dns_server: DNSServer,
) -> None:
    """Several gateways: the owner of b.example's partition holds its stream.  A second
    gateway that wins the partition takes the traffic (its dialback keys are checked by
    the first one's listener: one secret per cluster); when it leaves, the first takes the
    partition back.  Last test of the module: it changes cluster a."""
    a, b = clusters
    p = subjects.partition(B, a.partitions)
    lease = keys.partition_lease("s2s", p)
    redis = users_ab[0].redis
    second = next(n for n in (f"s2s-{i}" for i in range(2, 50))
                  if assign(p, ["s2s-1", n]) == n)
    alice, pw_a = await users_ab[0].create("alice")
    bob, pw_b = await users_ab[1].create("bob")
    ca = await _login(a, alice, pw_a, "laptop")
    cb = await _login(b, bob, pw_b, "phone")

    async def owned_by(name: str) -> bool:
        return (await redis.get(lease) or b"").decode() == name

    try:
        await asyncio.to_thread(lambda: a.start_s2s(
            second, 0, STANZAD_S2S_DNS_SERVERS=f"127.0.0.1:{dns_server.port}",
            STANZAD_S2S_TRUSTED_CERTS=f"{B}={_cert(b)}",
        ))
        await eventually(lambda: owned_by(second), 15, f"{second} owns b.example")
        # What is published before the hand-over fence is still the first gateway's to send
        # (shared/cluster/partitions.py): keep sending until the second one has opened its link.
        out = 'stanzad_s2s_authentications_total{direction="out",mechanism="EXTERNAL"}'
        sent: list[str] = []

        async def second_has_the_link() -> bool:
            sent.append(f"second-{len(sent)}")
            ca.send_message(mto=bob, mbody=sent[-1], mtype="chat")
            await asyncio.sleep(0.2)
            return out in await asyncio.to_thread(a.metrics, second)

        await eventually(second_has_the_link, 20, f"{second} opened the link")
        assert await _bodies(cb, len(sent), 20) == sent  # in order, none lost or doubled

        await asyncio.to_thread(localservers.stop, a.procs[second])  # SIGTERM: hands over
        await eventually(lambda: owned_by("s2s-1"), 15, "s2s-1 owns b.example again")
        for i in range(5):
            ca.send_message(mto=bob, mbody=f"first-{i}", mtype="chat")
        assert await _bodies(cb, 5, 20) == [f"first-{i}" for i in range(5)]
    finally:
        await ca.logout()
        await cb.logout()
