"""Multi-user chat across federation with a real Prosody 0.12 on loopback (XEP-0045 over
RFC 6120 §13): a Prosody user joins a stanzad room and chats, and a stanzad user joins a
room of Prosody's MUC component and chats.

The rooms live on service domains (conference.stanzad.example, conference.prosody.example),
so each side's gateway serves a domain besides its main one: streams are addressed to the
service domain, and each stream is authenticated for its pair of domains (RFC 6120 §13.7,
XEP-0220 §2.4); Prosody opens one per pair, and so do we.  Two runs: Server Dialback with
STARTTLS, and SASL EXTERNAL (XEP-0178) over direct TLS (XEP-0368), where each side trusts
the other's self-signed certificate, which covers the service domain (subjectAltName).
Skipped when the Debian package `prosody` is not installed (.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from devtools import localservers
from shared.tls.context import ensure_self_signed
from tests.conftest import Users
from tests.support import prosody as prosody_mod
from tests.support.cluster import Cluster, new_cluster
from tests.support.dns import DNSServer
from tests.support.muc import Occupant
from tests.support.xmpp import Client, eventually

pytestmark = pytest.mark.skipif(
    not prosody_mod.available(),
    reason="prosody is not installed (Debian package `prosody`; .ci/run installs it)",
)

OURS, THEIRS = "stanzad.example", "prosody.example"
OUR_MUC, THEIR_MUC = f"conference.{OURS}", f"conference.{THEIRS}"
MUC_NS = "http://jabber.org/protocol/muc"


@dataclass
class Interop:
    cluster: Cluster
    prosody: prosody_mod.Prosody
    users: Users
    mode: str  # "dialback" or "EXTERNAL"


def _records(domains: tuple[str, ...], host: str, port: int, tls_port: int,
             direct: bool) -> dict[tuple[str, str], list[str]]:
    """SRV records of each domain to one host (RFC 6120 §3.2.1; XEP-0368 when ``direct``)."""
    out: dict[tuple[str, str], list[str]] = {(host, "A"): ["127.0.0.1"]}
    for domain in domains:
        out[(f"_xmpp-server._tcp.{domain}", "SRV")] = [f"0 5 {port} {host}."]
        if direct:
            out[(f"_xmpps-server._tcp.{domain}", "SRV")] = [f"0 5 {tls_port} {host}."]
    return out


@pytest.fixture(scope="module", params=[
    pytest.param(("dialback", "STARTTLS"), id="dialback-starttls"),
    pytest.param(("EXTERNAL", "direct TLS"), id="EXTERNAL-directtls"),
])
async def interop(request: pytest.FixtureRequest) -> AsyncIterator[Interop]:
    mode, tls = request.param
    direct = tls == "direct TLS"
    cluster = new_cluster(OURS)
    our_cert = cluster.workdir / "tls" / "s2s-cert.pem"
    ensure_self_signed(str(our_cert), str(cluster.workdir / "tls" / "s2s-key.pem"), OURS,
                       [OUR_MUC])
    gw_port, gw_tls_port = localservers.free_port(), localservers.free_port()
    p_port, p_tls_port = localservers.free_port(), localservers.free_port()
    dns = DNSServer({
        **_records((OURS, OUR_MUC), f"gw.{OURS}", gw_port, gw_tls_port, direct),
        **_records((THEIRS, THEIR_MUC), f"gw.{THEIRS}", p_port, p_tls_port, direct),
    })
    await dns.start()
    prosody = prosody_mod.Prosody(cluster.workdir / "prosody", THEIRS, OURS, dns.port,
                                  s2s_port=p_port, s2s_tls_port=p_tls_port,
                                  trust=str(our_cert) if mode == "EXTERNAL" else "",
                                  peer_services=(OUR_MUC,), muc=True)
    users: Users | None = None
    try:
        prosody.start()
        cluster.start_servers()
        cluster.start_core()
        cluster.start_muc()
        trusted = (f"{THEIRS}={prosody.cert},{THEIR_MUC}={prosody.cert}"
                   if mode == "EXTERNAL" else "")
        cluster.start_s2s(port=gw_port, STANZAD_S2S_TRUSTED_CERTS=trusted,
                          STANZAD_S2S_DNS_SERVERS=f"127.0.0.1:{dns.port}",
                          STANZAD_S2S_DIRECT_TLS_PORT=str(gw_tls_port))
        cluster.start_cm()
        users = Users(cluster)
        yield Interop(cluster, prosody, users, mode)
    finally:
        if users is not None:
            await users.close()
        cluster.stop()
        prosody.stop()
        dns.stop()


def _logs(ix: Interop) -> str:
    return (f"--- prosody\n{ix.prosody.log()[-6000:]}\n--- s2s\n{ix.cluster.log('s2s-1')}"
            f"\n--- muc\n{ix.cluster.log('muc-1')[-2000:]}")


async def _people(ix: Interop) -> tuple[Occupant, str, Client]:
    """A stanzad user (raw stream) and a Prosody user (slixmpp), both logged in."""
    ours, pw = await ix.users.create("alice")
    a = await Occupant(ix.cluster.c2s_port, ours, pw).login()
    theirs = f"carol{secrets.token_hex(3)}@{THEIRS}"
    await asyncio.to_thread(ix.prosody.register, theirs.partition("@")[0], "carol-pw")
    c = Client(f"{theirs}/phone", "carol-pw", mech="SCRAM-SHA-1")
    await c.login("127.0.0.1", ix.prosody.c2s_port)
    return a, theirs, c


async def _body(c: Client, text: str, timeout: float = 30) -> Any:
    """The first message with this body (others, such as the subject, are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await c.messages.get()
            if str(msg["body"]) == text:
                return msg


def _join(c: Client, occupant: str) -> None:
    c.send_raw(f"<presence to='{occupant}'><x xmlns='{MUC_NS}'/></presence>")


async def test_xep0045_7_2_prosody_user_joins_a_stanzad_room_and_chats(
    interop: Interop,
) -> None:
    a, _, c = await _people(interop)
    room = f"fed-{secrets.token_hex(4)}@{OUR_MUC}"
    try:
        await a.create(room, "alice")
        _join(c, f"{room}/carol")
        try:
            # §7.2.3: the others see the new occupant; it gets its own presence (110)
            await a.expect(r"<presence[^>]*from=\"" + re.escape(f"{room}/carol") + r"\"",
                           timeout=40)
            await eventually(lambda: c.saw_presence(f"{room}/carol"), 20, "self-presence")
            assert c.saw_presence(f"{room}/alice")
            c.send_message(mto=room, mbody="hello from prosody", mtype="groupchat")
            await a.expect(r"from=\"" + re.escape(f"{room}/carol") + r"\".*?hello from prosody")
            await a.send(f"<message to='{room}' type='groupchat'>"
                         "<body>hello from stanzad</body></message>")
            msg = await _body(c, "hello from stanzad")
            assert str(msg["from"]) == f"{room}/alice" and msg["type"] == "groupchat"
            # XEP-0045 §16.3: the remote occupant asks for alice's vCard through the room
            # (her server answers for her account, to the asker's room JID, and the room
            # passes it on); and of her account directly over s2s (XEP-0054)
            await a.send("<iq type='set' id='vc0'><vCard xmlns='vcard-temp'><FN>Alice Fed</FN>"
                         "</vCard></iq>")
            await a.expect(r"id=\"vc0\"")
            for to in (f"{room}/alice", a.jid):
                iq = c.make_iq_get(ito=to)
                iq.append(ET.fromstring("<vCard xmlns='vcard-temp'/>"))
                card = await iq.send(timeout=30)
                assert "Alice Fed" in str(card), card
                assert str(card["from"]) == to
            # §7.14: the remote occupant leaves, the others are told
            c.send_presence(pto=f"{room}/carol", ptype="unavailable")
            await a.expect(r"<presence[^>]*from=\"" + re.escape(f"{room}/carol")
                           + r"\"[^>]*type=\"unavailable\"|<presence[^>]*type=\"unavailable\""
                           r"[^>]*from=\"" + re.escape(f"{room}/carol") + r"\"")
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{_logs(interop)}")
        log = interop.cluster.log("s2s-1")
        # our stream to Prosody for the room is the service domain's own (RFC 6120 §13.7)
        assert f"s2s stream to {THEIRS} ready ({interop.mode}" in log, _logs(interop)
        assert f"from {OUR_MUC}" in log, _logs(interop)
    finally:
        await a.close()
        await c.logout()


async def test_xep0045_7_2_stanzad_user_joins_a_prosody_room_and_chats(
    interop: Interop,
) -> None:
    a, _, c = await _people(interop)
    room = f"fed-{secrets.token_hex(4)}@{THEIR_MUC}"
    try:
        try:
            # §10.1.2: alice creates the room on Prosody's MUC and accepts the defaults
            await a.create(room, "alice")
            _join(c, f"{room}/carol")
            await a.expect(r"<presence[^>]*from=\"" + re.escape(f"{room}/carol") + r"\"")
            await eventually(lambda: c.saw_presence(f"{room}/carol"), 20, "self-presence")
            await a.send(f"<message to='{room}' type='groupchat'>"
                         "<body>hello from stanzad</body></message>")
            msg = await _body(c, "hello from stanzad")
            assert str(msg["from"]) == f"{room}/alice"
            c.send_message(mto=room, mbody="hello from prosody", mtype="groupchat")
            await a.expect(r"from=\"" + re.escape(f"{room}/carol") + r"\".*?hello from prosody")
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{_logs(interop)}")
        assert f"s2s stream to {THEIR_MUC} ready ({interop.mode}" in (
            interop.cluster.log("s2s-1")), _logs(interop)
    finally:
        await a.close()
        await c.logout()
