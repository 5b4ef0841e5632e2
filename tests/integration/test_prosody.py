"""Federation with a real Prosody 0.12 on loopback (RFC 6120 §13, RFC 6121 §3-§4): Server
Dialback both ways (XEP-0220), and SASL EXTERNAL both ways (XEP-0178), each over direct TLS
(XEP-0368) and over STARTTLS (RFC 6120 §5).

Both sides find each other through a tiny DNS server in this fixture: Prosody through its
unbound forwarder, stanzad through STANZAD_S2S_DNS_SERVERS (dnspython).  In the direct TLS
runs both domains publish _xmpps-server._tcp and _xmpp-server._tcp, and both sides prefer
the first; in the STARTTLS runs only _xmpp-server._tcp.  Our verifying handshake succeeds
in the EXTERNAL runs (then EXTERNAL); in the dialback runs it fails, and we connect again
without verification and use dialback.  Our stream to Prosody passes a TCP proxy of the test
(tests/support/tcpproxy.py), which can reset it.  Prosody runs mod_smacks (XEP-0198): it
offers acks on s2s only to a stream already authenticated when its features are sent, i.e.
after SASL EXTERNAL, never to a dialback stream, and asks for them under the same rule.
Skipped when the Debian package `prosody` is not installed (.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from devtools import localservers
from shared.tls.context import ensure_self_signed
from shared.xmpp.subscription import Subscription
from tests.conftest import Users
from tests.support import prosody as prosody_mod
from tests.support.cluster import Cluster, metric_value, new_cluster
from tests.support.dns import DNSServer
from tests.support.tcpproxy import TCPProxy
from tests.support.xmpp import Client, eventually

pytestmark = pytest.mark.skipif(
    not prosody_mod.available(),
    reason="prosody is not installed (Debian package `prosody`; .ci/run installs it)",
)

OURS, THEIRS = "stanzad.example", "prosody.example"


@dataclass
class Interop:
    cluster: Cluster
    prosody: prosody_mod.Prosody
    dns: DNSServer
    users: Users
    mode: str  # how our outbound stream authenticates: "dialback" or "EXTERNAL"
    proxy: TCPProxy  # in front of Prosody's port for our stream to it
    tls: str = "direct TLS"  # how both streams start TLS: "direct TLS" or "STARTTLS"


@pytest.fixture(scope="module", params=[
    pytest.param(("dialback", "direct TLS"), id="dialback-directtls"),
    pytest.param(("EXTERNAL", "direct TLS"), id="EXTERNAL-directtls"),
    pytest.param(("dialback", "STARTTLS"), id="dialback-starttls"),
    pytest.param(("EXTERNAL", "STARTTLS"), id="EXTERNAL-starttls"),
])
async def interop(request: pytest.FixtureRequest) -> AsyncIterator[Interop]:
    """``dialback``: no certificate is trusted either way.  ``EXTERNAL``: each side trusts
    the other's self-signed certificate (Prosody's cafile, STANZAD_S2S_TRUSTED_CERTS), so
    both streams use SASL EXTERNAL (XEP-0178): ours to Prosody, and Prosody's to us (our
    listener asks for its certificate and offers EXTERNAL when it is valid for the domain
    of the stream header).  ``direct TLS``: both domains publish _xmpps-server._tcp, which
    both sides prefer (XEP-0368); ``STARTTLS``: only _xmpp-server._tcp (RFC 6120 §5)."""
    mode, tls = request.param
    direct = tls == "direct TLS"
    cluster = new_cluster(OURS)
    our_cert = cluster.workdir / "tls" / "s2s-cert.pem"
    ensure_self_signed(str(our_cert), str(cluster.workdir / "tls" / "s2s-key.pem"), OURS)
    gw_port, gw_tls_port = localservers.free_port(), localservers.free_port()
    p_port, p_tls_port = localservers.free_port(), localservers.free_port()
    proxy = TCPProxy(p_tls_port if direct else p_port)
    await proxy.start()
    records = {
        (f"_xmpp-server._tcp.{OURS}", "SRV"): [f"0 5 {gw_port} gw.{OURS}."],
        (f"gw.{OURS}", "A"): ["127.0.0.1"],
        (OURS, "A"): ["127.0.0.1"],
        (f"_xmpp-server._tcp.{THEIRS}", "SRV"):
            [f"0 5 {p_port if direct else proxy.port} gw.{THEIRS}."],
        (f"gw.{THEIRS}", "A"): ["127.0.0.1"],
    }
    if direct:
        records[(f"_xmpps-server._tcp.{OURS}", "SRV")] = [f"0 5 {gw_tls_port} gw.{OURS}."]
        records[(f"_xmpps-server._tcp.{THEIRS}", "SRV")] = [f"0 5 {proxy.port} gw.{THEIRS}."]
    dns = DNSServer(records)
    await dns.start()
    prosody = prosody_mod.Prosody(cluster.workdir / "prosody", THEIRS, OURS, dns.port,
                                  s2s_port=p_port, s2s_tls_port=p_tls_port,
                                  trust=str(our_cert) if mode == "EXTERNAL" else "")
    users: Users | None = None
    try:
        prosody.start()
        cluster.start_servers()
        cluster.start_core()
        trusted = f"{THEIRS}={prosody.cert}" if mode == "EXTERNAL" else ""
        cluster.start_s2s(port=gw_port, STANZAD_S2S_TRUSTED_CERTS=trusted,
                          STANZAD_S2S_DNS_SERVERS=f"127.0.0.1:{dns.port}",
                          STANZAD_S2S_DIRECT_TLS_PORT=str(gw_tls_port))
        cluster.start_cm()
        users = Users(cluster)
        yield Interop(cluster, prosody, dns, users, mode, proxy, tls)
    finally:
        if users is not None:
            await users.close()
        cluster.stop()
        prosody.stop()
        proxy.stop()
        dns.stop()


async def _pair(ix: Interop) -> tuple[str, Client, str, Client]:
    ours, pw = await ix.users.create("alice")
    theirs = f"carol{secrets.token_hex(3)}@{THEIRS}"
    await asyncio.to_thread(ix.prosody.register, theirs.partition("@")[0], "carol-pw")
    a = Client(f"{ours}/laptop", pw)
    await a.login("127.0.0.1", ix.cluster.c2s_port)
    c = Client(f"{theirs}/phone", "carol-pw", mech="SCRAM-SHA-1")
    await c.login("127.0.0.1", ix.prosody.c2s_port)
    return ours, a, theirs, c


def _logs(ix: Interop) -> str:
    return f"--- prosody\n{ix.prosody.log()[-4000:]}\n--- s2s\n{ix.cluster.log('s2s-1')}"


async def test_xep0220_messages_both_ways_in_order_with_prosody(interop: Interop) -> None:
    ours, a, theirs, c = await _pair(interop)
    try:
        for i in range(5):
            a.send_message(mto=theirs, mbody=f"to-prosody-{i}", mtype="chat")
        try:
            got = [str((await asyncio.wait_for(c.messages.get(), 20))["body"]) for _ in range(5)]
        except TimeoutError:
            pytest.fail("no message reached Prosody\n" + _logs(interop))
        assert got == [f"to-prosody-{i}" for i in range(5)]
        for i in range(5):
            c.send_message(mto=ours, mbody=f"from-prosody-{i}", mtype="chat")
        try:
            got = [str((await asyncio.wait_for(a.messages.get(), 20))["body"]) for _ in range(5)]
        except TimeoutError:
            pytest.fail("no message came from Prosody\n" + _logs(interop))
        assert got == [f"from-prosody-{i}" for i in range(5)]
        metrics = interop.cluster.metrics("s2s-1")
        out = f'stanzad_s2s_authentications_total{{direction="out",mechanism="{interop.mode}"}}'
        assert out in metrics, _logs(interop)
        inbound = f'stanzad_s2s_authentications_total{{direction="in",mechanism="{interop.mode}"}}'
        assert inbound in metrics, _logs(interop)
        ready = f"s2s stream to {THEIRS} ready ({interop.mode} over {interop.tls}"
        assert ready in interop.cluster.log("s2s-1"), _logs(interop)
        # ... and Prosody's to us came to our direct TLS port (its _xmpps-server lookup),
        # or, without that record, to 5269 with STARTTLS
        direct_in = metric_value(metrics, "stanzad_s2s_direct_tls_connections_total")
        assert (direct_in >= 1) == (interop.tls == "direct TLS"), _logs(interop)
        # XEP-0198 both ways after EXTERNAL; Prosody 0.12 neither offers nor asks for it on
        # dialback streams (mod_smacks checks the session is authenticated at features time)
        # (Prosody asks for it on its stream to us after flushing what it had queued)
        expected = 1 if interop.mode == "EXTERNAL" else 0

        def sm_enabled(direction: str) -> float:
            return min(1, metric_value(interop.cluster.metrics("s2s-1"),
                                       "stanzad_s2s_sm_enabled_total", direction=direction))

        for direction in ("out", "in"):
            if expected:
                await eventually(functools.partial(sm_enabled, direction), 10,
                                 f"XEP-0198 enabled {direction}")
            assert sm_enabled(direction) == expected, (direction, _logs(interop))
    finally:
        await a.logout()
        await c.logout()


async def test_rfc6121_3_subscription_and_presence_both_ways_with_prosody(
    interop: Interop,
) -> None:
    ours, a, theirs, c = await _pair(interop)
    try:
        await a.get_roster()
        await c.get_roster()
        a.send_presence(pto=theirs, ptype="subscribe")  # Prosody's side: carol's client
        # slixmpp on both sides approves the request and subscribes back

        async def both_here() -> bool:
            item = await interop.users.rosters.item(ours, theirs)
            return item is not None and item.state.subscription == Subscription.BOTH

        try:
            await eventually(both_here, 30, "subscription both on stanzad's side")
            await eventually(lambda: a.saw_presence(f"{theirs}/phone")
                             and c.saw_presence(f"{ours}/laptop"), 20, "presence both ways")
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{_logs(interop)}")

        async def both_there() -> bool:  # Prosody's roster push may trail its presence
            await c.get_roster()
            return bool(c.client_roster[ours]["subscription"] == "both")

        await eventually(both_there, 20, "subscription both on Prosody's side")
    finally:
        await a.logout()
        await c.logout()



def _unacked(ix: Interop) -> float:
    return metric_value(ix.cluster.metrics("s2s-1"), "stanzad_s2s_unacked_stanzas")


async def test_xep0198_unacked_stanzas_go_again_after_a_reset_with_prosody(
    interop: Interop,
) -> None:
    """Prosody acks our stanzas (XEP-0198 §4); the path to it stops delivering, then the
    connection is reset: the unacked messages reach Prosody's user on a new stream, in
    order."""
    if interop.mode != "EXTERNAL":
        pytest.skip("Prosody 0.12 does XEP-0198 on s2s only after SASL EXTERNAL")
    _, a, theirs, c = await _pair(interop)
    try:
        a.send_message(mto=theirs, mbody="warm-up", mtype="chat")
        assert str((await asyncio.wait_for(c.messages.get(), 20))["body"]) == "warm-up"
        await eventually(lambda: _unacked(interop) == 0, 10, "Prosody acked the warm-up")
        interop.proxy.swallow_open()
        for i in range(10):
            a.send_message(mto=theirs, mbody=f"m{i}", mtype="chat")
        await eventually(lambda: _unacked(interop) == 10, 10, "ten written, none acked")
        interop.proxy.cut_all()
        try:
            got = [str((await asyncio.wait_for(c.messages.get(), 30))["body"])
                   for _ in range(10)]
        except TimeoutError:
            pytest.fail("the unacked messages never reached Prosody\n" + _logs(interop))
        assert got == [f"m{i}" for i in range(10)]
        metrics = interop.cluster.metrics("s2s-1")
        assert metric_value(metrics, "stanzad_s2s_resent_total") >= 10
        await eventually(lambda: _unacked(interop) == 0, 10, "Prosody acked them")
    finally:
        await a.logout()
        await c.logout()
