"""Certificates per domain on the s2s gateway (STANZAD_TLS_CERTS_DIR, shared/tls/certs.py):
a cluster serving two domains, one with a certificate of its own (issued by a CA of the
test) and one without (the STANZAD_TLS_CERT default).

Inbound, a raw TLS client gets the certificate of the domain it names in SNI (RFC 6066 §3)
on the direct TLS port (XEP-0368), and on a STARTTLS stream without SNI the certificate of
the domain its stream header addressed.  Outbound, a test peer (``peer.example``, reached
through STANZAD_S2S_OVERRIDES) asks for the client certificate and records which one each
stream presents: the certificate of the local domain the stream speaks for, the one the
peer checks against the stream's 'from' before it offers SASL EXTERNAL (XEP-0178 §2)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from devtools import localservers
from shared.tls import memory as tls_memory
from shared.tls.context import ensure_dev_ca, ensure_issued
from shared.xmpp.credentials import derive_credentials
from tests.conftest import TEST_ITERATIONS, Users
from tests.support.cluster import Cluster, new_cluster
from tests.support.xmpp import Client

MAIN = "sni-main.example"  # no certificate of its own: STANZAD_TLS_CERT's
OWN = "sni-own.example"  # its own, in the certificates directory
PEER = "peer.example"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"


def _issue(ca: Path, cert: Path, key: Path, names: list[str]) -> None:
    ensure_issued(str(cert), str(key), str(ca / "ca.crt"), str(ca / "ca.key"), names)


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


class CertificatePeer:
    """``peer.example``: answers a stream with required STARTTLS, asks for the client's
    certificate (accepting any: shared/tls/memory.py) and records (the stream's 'from', the
    certificate presented), then closes."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = tls_memory.server_context(str(cert), str(key))
        self.seen: asyncio.Queue[tuple[str, x509.Certificate | None]] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(self._stream(reader, writer), 20)
        except (TimeoutError, ConnectionError, tls_memory.TLSFailed):
            pass
        finally:
            writer.close()

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        while (m := re.search(rb"<stream:stream[^>]*>", buf)) is None:
            chunk = await reader.read(4096)
            if not chunk:
                return
            buf += chunk
        found = re.search(rb"""from=['"]([^'"]+)['"]""", m.group(0))
        local = found.group(1).decode() if found else ""
        writer.write(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
            "xmlns:stream='http://etherx.jabber.org/streams' "
            f"xmlns:db='jabber:server:dialback' from='{PEER}' to='{local}' id='peer-1' "
            f"version='1.0'><stream:features><starttls xmlns='{TLS_NS}'><required/>"
            "</starttls></stream:features>".encode())
        while b"<starttls" not in buf:
            chunk = await reader.read(4096)
            if not chunk:
                return
            buf += chunk
        writer.write(f"<proceed xmlns='{TLS_NS}'/>".encode())
        tls = tls_memory.ServerTLS(self.ctx)
        while not tls.handshake_done:
            chunk = await reader.read(65536)
            if not chunk:
                return
            tls.receive_data(chunk)
            writer.write(tls.data_to_send())
        chain = tls.peer_chain()
        await self.seen.put((local, chain[0] if chain else None))

    async def presented_by(self, local: str, timeout: float = 30) -> x509.Certificate | None:
        """The certificate the first stream from our domain ``local`` presented."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            domain, cert = await asyncio.wait_for(self.seen.get(),
                                                  max(0.1, deadline - loop.time()))
            if domain == local:
                return cert


@dataclass
class Setup:
    cluster: Cluster
    ca: Path
    default_cert: x509.Certificate  # STANZAD_TLS_CERT of the gateway
    own_cert: x509.Certificate
    peer: CertificatePeer
    direct_port: int


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("s2s-certs")
    ensure_dev_ca(str(d / "ca.crt"), str(d / "ca.key"))
    (d / "certs" / OWN).mkdir(parents=True)
    # cert-manager's Secret layout; the names a certificate of a domain should hold
    _issue(d, d / "certs" / OWN / "tls.crt", d / "certs" / OWN / "tls.key",
           [OWN, f"*.{OWN}"])
    _issue(d, d / "peer.crt", d / "peer.key", [PEER])
    (d / "domains.json").write_text(json.dumps({"domains": [{"name": OWN}]}))
    return d


@pytest.fixture(scope="module")
def sni_cluster(postgres: object, tls_files: Path) -> Iterator[Cluster]:
    c = new_cluster(MAIN)
    c.common_env = {"STANZAD_DOMAINS_FILE": str(tls_files / "domains.json")}
    try:
        c.start_servers()
        c.start_core()
        c.start_cm()
        yield c
    finally:
        c.stop()


@pytest.fixture
async def setup(sni_cluster: Cluster, tls_files: Path) -> AsyncIterator[Setup]:
    peer = CertificatePeer(tls_files / "peer.crt", tls_files / "peer.key")
    await peer.start()
    direct_port = localservers.free_port()
    try:
        await asyncio.to_thread(
            sni_cluster.start_s2s, "s2s-sni", overrides=f"{PEER}=127.0.0.1:{peer.port}",
            STANZAD_TLS_CERTS_DIR=str(tls_files / "certs"),
            STANZAD_S2S_DIRECT_TLS_PORT=str(direct_port),
            # the peer's certificate is valid for it: the verifying handshake (XEP-0178)
            STANZAD_S2S_TRUSTED_CERTS=f"{PEER}={tls_files / 'ca.crt'}")
        default = x509.load_pem_x509_certificate(
            (sni_cluster.workdir / "tls" / "s2s-cert.pem").read_bytes())
        own = x509.load_pem_x509_certificate((tls_files / "certs" / OWN / "tls.crt").read_bytes())
        yield Setup(sni_cluster, tls_files, default, own, peer, direct_port)
    finally:
        with contextlib.suppress(Exception):
            sni_cluster.kill("s2s-sni")
        await peer.stop()


def _client_context(ca: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca / "ca.crt")) if ca else ssl.SSLContext(
        ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if ca is None:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _peer_certificate(writer: asyncio.StreamWriter) -> x509.Certificate:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


async def _direct_tls(port: int, sni: str) -> x509.Certificate:
    """XEP-0368 direct TLS with SNI ``sni``, ALPN xmpp-server."""
    ctx = _client_context(None)
    ctx.set_alpn_protocols(["xmpp-server"])
    _, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=sni), 15)
    try:
        return _peer_certificate(writer)
    finally:
        writer.close()


async def _starttls_without_sni(port: int, to: str) -> x509.Certificate:
    """A stream header to ``to``, STARTTLS, a handshake that sends no SNI."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 15)
    try:
        writer.write(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
            "xmlns:stream='http://etherx.jabber.org/streams' "
            f"xmlns:db='jabber:server:dialback' to='{to}' from='{PEER}' version='1.0'>"
            .encode())
        buf = b""
        while b"</stream:features>" not in buf:
            chunk = await asyncio.wait_for(reader.read(4096), 15)
            assert chunk, buf
            buf += chunk
        assert b"<starttls" in buf, buf
        writer.write(f"<starttls xmlns='{TLS_NS}'/>".encode())
        buf = b""
        while b"<proceed" not in buf:
            chunk = await asyncio.wait_for(reader.read(4096), 15)
            assert chunk, buf
            buf += chunk
        await asyncio.wait_for(
            writer.start_tls(_client_context(None), server_hostname=None), 15)
        return _peer_certificate(writer)
    finally:
        writer.close()


async def test_rfc6066_3_inbound_handshakes_get_the_certificate_of_the_domain_named(
    setup: Setup,
) -> None:
    s = setup
    got = await _direct_tls(s.direct_port, OWN)
    assert got == s.own_cert and _cn(got) == OWN
    # a service subdomain of the domain: the domain's (its names cover *.<domain>)
    assert await _direct_tls(s.direct_port, f"conference.{OWN}") == s.own_cert
    # a domain without a certificate of its own, and a name we do not serve: the default
    assert await _direct_tls(s.direct_port, MAIN) == s.default_cert
    assert await _direct_tls(s.direct_port, "unknown.example") == s.default_cert
    # STARTTLS without SNI: the domain the stream header addressed (RFC 6120 §4.7.2)
    s2s_port = s.cluster.s2s_port
    assert await _starttls_without_sni(s2s_port, OWN) == s.own_cert
    assert await _starttls_without_sni(s2s_port, MAIN) == s.default_cert


async def test_xep0178_outbound_streams_present_the_certificate_of_the_local_domain(
    setup: Setup,
) -> None:
    s = setup
    users = await Users(s.cluster).open()
    clients: list[Client] = []
    try:
        for domain in (OWN, MAIN):
            jid = f"sender@{domain}"
            if not await users.accounts.exists(jid):
                await users.accounts.create(jid, derive_credentials("pw", TEST_ITERATIONS))
            client = Client(f"{jid}/r", "pw")
            await client.login("127.0.0.1", s.cluster.c2s_port)
            clients.append(client)
        # from the domain with its own certificate: that one, issued for it
        clients[0].send_message(mto=f"carol@{PEER}", mbody="hi", mtype="chat")
        presented = await s.peer.presented_by(OWN)
        assert presented is not None and presented == s.own_cert, presented
        # from the one without: the default certificate
        clients[1].send_message(mto=f"carol@{PEER}", mbody="hi", mtype="chat")
        assert await s.peer.presented_by(MAIN) == s.default_cert
    finally:
        for client in clients:
            await client.logout()
        await users.close()
