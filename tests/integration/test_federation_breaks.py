"""Broken s2s streams between two stanzad clusters, and the inbound connection limits
(XEP-0198 §4 acks on s2s; RFC 6120 §8.3.3.17 bounces; RFC 6120 §13.12).

a.example reaches b.example through a TCP proxy of the test (DNS: b's _xmpp-server._tcp
names the proxy), which can swallow what a sends on the open connections or reset them.
Each side trusts the other's certificate, so a's stream is SASL EXTERNAL, and b offers
XEP-0198: a keeps every stanza until b acks it, and after a break sends the unacked ones
again on a new stream (an IQ set is bounced instead).  b limits inbound connections per
source address: 4 open, 20 new ones a minute (the proxy's connections come from 127.0.0.1,
the tests' raw ones from 127.0.0.2 to 127.0.0.4), and closes streams idle for 8 s."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from devtools import localservers
from shared.tls.context import ensure_self_signed
from tests.conftest import Users
from tests.support.cluster import Cluster, metric_value, new_cluster
from tests.support.dns import DNSServer
from tests.support.tcpproxy import TCPProxy
from tests.support.xmpp import Client, eventually

A, B = "a.example", "b.example"
PER_IP, PER_MIN = 4, 20
IDLE_S = 8  # b closes inbound streams idle this long


def _cert(c: Cluster) -> Path:
    return c.workdir / "tls" / "s2s-cert.pem"


@pytest.fixture(scope="module")
async def net() -> AsyncIterator[tuple[DNSServer, TCPProxy]]:
    a_port, b_port = localservers.free_port(), localservers.free_port()
    proxy = TCPProxy(b_port)
    await proxy.start()
    server = DNSServer({
        (f"_xmpp-server._tcp.{A}", "SRV"): [f"0 5 {a_port} gw.{A}."],
        (f"_xmpp-server._tcp.{B}", "SRV"): [f"0 5 {proxy.port} gw.{B}."],
        (f"gw.{A}", "A"): ["127.0.0.1"],
        (f"gw.{B}", "A"): ["127.0.0.1"],
    })
    server.ports = {"a": a_port, "b": b_port}  # type: ignore[attr-defined]
    await server.start()
    yield server, proxy
    proxy.stop()
    server.stop()


@pytest.fixture(scope="module")
def clusters(net: tuple[DNSServer, TCPProxy]) -> Iterator[tuple[Cluster, Cluster]]:
    dns_server, _ = net
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
                    STANZAD_S2S_TRUSTED_CERTS=f"{B}={_cert(b)}",
                    STANZAD_S2S_SM_ACK_TIMEOUT_S="5")
        b.start_s2s(port=ports["b"], wait=False, STANZAD_S2S_DNS_SERVERS=dns,
                    STANZAD_S2S_TRUSTED_CERTS=f"{A}={_cert(a)}",
                    STANZAD_S2S_MAX_CONNECTIONS_PER_IP=str(PER_IP),
                    STANZAD_S2S_CONNECTIONS_PER_IP_PER_MIN=str(PER_MIN),
                    STANZAD_S2S_IDLE_TIMEOUT_S=str(IDLE_S))
        for c in (a, b):
            for name in ("router-1", "presence-1", "roster-1", "s2s-1"):
                c.wait_ready(name)
            c.start_cm()
        yield a, b
    finally:
        for c in (a, b):
            c.stop()


@pytest.fixture
async def pair(clusters: tuple[Cluster, Cluster]) -> AsyncIterator[tuple[str, Client, str, Client]]:
    a, b = clusters
    ua, ub = Users(a), Users(b)
    alice, pw_a = await ua.create("alice")
    bob, pw_b = await ub.create("bob")
    ca = Client(f"{alice}/laptop", pw_a)
    await ca.login("127.0.0.1", a.c2s_port)
    cb = Client(f"{bob}/phone", pw_b)
    await cb.login("127.0.0.1", b.c2s_port)
    yield alice, ca, bob, cb
    await ca.logout()
    await cb.logout()
    await ua.close()
    await ub.close()


async def _bodies(client: Client, n: int, timeout: float = 20) -> list[str]:
    return [str((await asyncio.wait_for(client.messages.get(), timeout))["body"])
            for _ in range(n)]


def _unacked(a: Cluster) -> float:
    return metric_value(a.metrics("s2s-1"), "stanzad_s2s_unacked_stanzas")


async def _warm_up(ca: Client, bob: str, cb: Client, a: Cluster) -> None:
    """The link to b is up, acks flowing: one message there and acked."""
    ca.send_message(mto=bob, mbody="warm-up", mtype="chat")
    assert await _bodies(cb, 1) == ["warm-up"]
    await eventually(lambda: _unacked(a) == 0, 10, "the warm-up message acked")
    assert metric_value(a.metrics("s2s-1"), "stanzad_s2s_sm_enabled_total",
                        direction="out") >= 1


async def test_xep0198_4_unacked_stanzas_of_a_reset_stream_are_sent_again(
    clusters: tuple[Cluster, Cluster], net: tuple[DNSServer, TCPProxy],
    pair: tuple[str, Client, str, Client],
) -> None:
    """The path stops delivering, then the connection is reset: the ten messages written
    meanwhile were never acked, so a sends them again on a new stream, in order; an IQ set
    written meanwhile is not repeated but bounced remote-server-timeout (RFC 6120
    §8.3.3.17)."""
    a, b = clusters
    _, proxy = net
    _, ca, bob, cb = pair
    await _warm_up(ca, bob, cb, a)
    for c, direction in ((a, "out"), (b, "in")):  # the stream's state, on both sides
        assert metric_value(c.metrics("s2s-1"), "stanzad_s2s_streams", direction=direction,
                            state="authenticated") >= 1
    resent_before = metric_value(a.metrics("s2s-1"), "stanzad_s2s_resent_total")
    proxy.swallow_open()
    for i in range(10):
        ca.send_message(mto=bob, mbody=f"m{i}", mtype="chat")
    iq = ca.make_iq_set(ito=bob)
    iq.append(ET.Element("{urn:example:test}poke"))
    reply = asyncio.ensure_future(iq.send(timeout=30))
    await eventually(lambda: _unacked(a) == 11, 10, "eleven stanzas written, none acked")
    proxy.cut_all()
    assert await _bodies(cb, 10) == [f"m{i}" for i in range(10)]  # none lost, in order
    with pytest.raises(IqError) as err:
        await reply
    assert err.value.condition == "remote-server-timeout"
    metrics = a.metrics("s2s-1")
    assert metric_value(metrics, "stanzad_s2s_resent_total") - resent_before == 10
    assert metric_value(metrics, "stanzad_s2s_bounces_total",
                        condition="remote-server-timeout") >= 1
    await eventually(lambda: _unacked(a) == 0, 10, "the resent messages acked")


async def test_xep0198_4_unanswered_ack_request_ends_a_silent_stream(
    clusters: tuple[Cluster, Cluster], net: tuple[DNSServer, TCPProxy],
    pair: tuple[str, Client, str, Client],
) -> None:
    """The path swallows everything but the connection stays up (TCP would take many
    minutes to notice): no <a/> within STANZAD_S2S_SM_ACK_TIMEOUT_S (5 s here), a aborts the
    stream and sends the unacked messages on a new one."""
    a, _ = clusters
    _, proxy = net
    _, ca, bob, cb = pair
    await _warm_up(ca, bob, cb, a)
    timeouts_before = metric_value(a.metrics("s2s-1"), "stanzad_s2s_ack_timeouts_total")
    proxy.swallow_open()
    for i in range(5):
        ca.send_message(mto=bob, mbody=f"s{i}", mtype="chat")
    assert await _bodies(cb, 5, 30) == [f"s{i}" for i in range(5)]
    assert (metric_value(a.metrics("s2s-1"), "stanzad_s2s_ack_timeouts_total")
            - timeouts_before) >= 1


async def test_xep0198_lost_acks_mean_stanzas_again_never_none(
    clusters: tuple[Cluster, Cluster], net: tuple[DNSServer, TCPProxy],
    pair: tuple[str, Client, str, Client],
) -> None:
    """b gets the messages but its acks are lost on the way back: after the ack timeout a
    sends them again, so bob may see some twice (no resumption, XEP-0198 §5), but every one
    arrives, and their first copies are in order."""
    a, _ = clusters
    _, proxy = net
    _, ca, bob, cb = pair
    await _warm_up(ca, bob, cb, a)
    proxy.swallow_answers()
    sent = [f"d{i}" for i in range(5)]
    for body in sent:
        ca.send_message(mto=bob, mbody=body, mtype="chat")
    got: list[str] = []
    while set(got) != set(sent) or got.count(sent[-1]) < 2:  # the originals, then again
        got += await _bodies(cb, 1, 30)
    first = list(dict.fromkeys(got))
    assert first == sent
    assert set(got) == set(sent) and len(got) <= 2 * len(sent)


async def _open(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Send a stream header; what comes back until features, an error, or the end."""
    writer.write(
        f"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
        f"xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
        f"from='{A}' to='{B}' version='1.0'>".encode()
    )
    buf = b""
    while b"</stream:features>" not in buf and b"</stream:stream>" not in buf:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        if not chunk:
            break
        buf += chunk
    return buf


async def test_rfc6120_13_12_open_connections_per_source_address_are_limited(
    clusters: tuple[Cluster, Cluster],
) -> None:
    _, b = clusters
    held = [await _open("127.0.0.2", b.s2s_port) for _ in range(PER_IP)]
    try:
        for reader, writer in held:
            assert b"<stream:features>" in await _greet(reader, writer)
        reader, writer = await _open("127.0.0.2", b.s2s_port)
        try:
            refused = await _greet(reader, writer)
        except TimeoutError:
            pytest.fail("no answer to a connection past the limit\n" + b.log("s2s-1"))
        writer.close()
        assert b"<policy-violation" in refused and b"</stream:stream>" in refused
        assert metric_value(b.metrics("s2s-1"), "stanzad_s2s_connections_refused_total",
                            reason="per_ip") >= 1
    finally:
        for _, writer in held:
            writer.close()


async def test_rfc6120_13_12_new_connections_per_source_address_per_minute_are_limited(
    clusters: tuple[Cluster, Cluster],
) -> None:
    _, b = clusters
    answers = []
    for _ in range(PER_MIN + 1):
        reader, writer = await _open("127.0.0.3", b.s2s_port)
        answers.append(await _greet(reader, writer))
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    assert all(b"<stream:features>" in got for got in answers[:PER_MIN])
    assert b"<policy-violation" in answers[PER_MIN]
    assert metric_value(b.metrics("s2s-1"), "stanzad_s2s_connections_refused_total",
                        reason="rate") >= 1


async def test_rfc6120_4_9_3_4_idle_inbound_stream_is_closed_with_connection_timeout(
    clusters: tuple[Cluster, Cluster],
) -> None:
    _, b = clusters
    reader, writer = await _open("127.0.0.4", b.s2s_port)
    try:
        assert b"<stream:features>" in await _greet(reader, writer)
        rest = b""
        while b"</stream:stream>" not in rest:
            chunk = await asyncio.wait_for(reader.read(65536), IDLE_S * 4)
            if not chunk:
                break
            rest += chunk
        assert b"<connection-timeout" in rest
    finally:
        writer.close()
