"""Peer certificates of s2s streams (RFC 6125 §6, XEP-0178 §3) and the server-side TLS over
memory buffers that asks for them without failing on ones it cannot verify."""

from __future__ import annotations

import contextlib
import datetime
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.tls.context import ensure_self_signed
from shared.tls.memory import ServerTLS, server_context
from shared.tls.peer_cert import (
    ID_ON_DNSSRV,
    ID_ON_XMPPADDR,
    CertificateTrust,
    identity_matches,
)

NOW = datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder().subject_name(_name("Test Root")).issuer_name(_name("Test Root"))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                     False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
              names: list[x509.GeneralName], eku: list[x509.ObjectIdentifier] | None = None,
              ) -> x509.Certificate:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder().subject_name(_name("leaf")).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=10))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def utf8(text: str) -> bytes:
    raw = text.encode()
    return bytes([0x0C, len(raw)]) + raw


def ia5(text: str) -> bytes:
    raw = text.encode()
    return bytes([0x16, len(raw)]) + raw


def test_rfc6125_6_4_dns_name_exact_and_one_label_wildcard() -> None:
    ca = make_ca()
    leaf = make_leaf(ca, [x509.DNSName("a.example"), x509.DNSName("*.b.example")])
    assert identity_matches(leaf, "a.example")
    assert identity_matches(leaf, "A.Example")
    assert identity_matches(leaf, "chat.b.example")
    assert not identity_matches(leaf, "b.example")  # the wildcard needs one label
    assert not identity_matches(leaf, "x.chat.b.example")  # ... exactly one
    assert not identity_matches(leaf, "c.example")


def test_xep0178_3_srvname_and_xmppaddr_identities() -> None:
    ca = make_ca()
    leaf = make_leaf(ca, [
        x509.OtherName(ID_ON_DNSSRV, ia5("_xmpp-server.srv.example")),
        x509.OtherName(ID_ON_XMPPADDR, utf8("addr.example")),
    ])
    assert identity_matches(leaf, "srv.example")
    assert identity_matches(leaf, "addr.example")
    assert not identity_matches(leaf, "other.example")


def test_chain_to_a_trusted_root_with_server_auth_only_eku_is_valid() -> None:
    """Servers connect with their server certificate: serverAuth alone is enough."""
    ca = make_ca()
    leaf = make_leaf(ca, [x509.DNSName("a.example")], [ExtendedKeyUsageOID.SERVER_AUTH])
    trust = CertificateTrust([ca[0]], {})
    assert trust.peer(leaf, []).valid_for("a.example")
    assert not trust.peer(leaf, []).valid_for("b.example")  # not its name
    code_signing = make_leaf(ca, [x509.DNSName("a.example")], [ExtendedKeyUsageOID.CODE_SIGNING])
    assert not trust.peer(code_signing, []).valid_for("a.example")


def test_chain_to_an_unknown_root_is_not_valid_unless_trusted_for_that_domain() -> None:
    ca = make_ca()
    leaf = make_leaf(ca, [x509.DNSName("a.example")])
    assert not CertificateTrust([make_ca()[0]], {}).peer(leaf, []).valid_for("a.example")
    private_ca = CertificateTrust([], {"a.example": [ca[0]]})
    assert private_ca.peer(leaf, []).valid_for("a.example")
    other_domain = CertificateTrust([], {"b.example": [ca[0]]})
    assert not other_domain.peer(leaf, []).valid_for("a.example")


def test_self_signed_certificate_pinned_for_its_domain(tmp_path: Path) -> None:
    ensure_self_signed(str(tmp_path / "a.pem"), str(tmp_path / "a.key"), "a.example")
    cert = x509.load_pem_x509_certificate((tmp_path / "a.pem").read_bytes())
    trust = CertificateTrust.load({"a.example": str(tmp_path / "a.pem")}, system=False)
    assert trust.peer(cert, []).valid_for("a.example")
    assert not CertificateTrust([], {}).peer(cert, []).valid_for("a.example")
    later = NOW + datetime.timedelta(days=400)
    assert not trust.chain_valid(cert, [], "a.example", now=later)  # expired by then


# ---- TLS over memory buffers ------------------------------------------------------------------


def _handshake(server: ServerTLS, client: ssl.SSLObject, cin: ssl.MemoryBIO,
               cout: ssl.MemoryBIO) -> None:
    for _ in range(10):
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
        server.receive_data(cout.read())
        cin.write(server.data_to_send())
        if server.handshake_done:
            try:
                client.do_handshake()
            except ssl.SSLWantReadError:
                continue
            return
    raise AssertionError("no handshake")


def _client(tmp_path: Path, with_cert: bool
            ) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if with_cert:  # a certificate nobody trusts
        ensure_self_signed(str(tmp_path / "c.pem"), str(tmp_path / "c.key"), "a.example")
        ctx.load_cert_chain(str(tmp_path / "c.pem"), str(tmp_path / "c.key"))
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    return ctx.wrap_bio(cin, cout, server_side=False), cin, cout


def test_untrusted_client_certificate_completes_the_handshake_and_is_available(
    tmp_path: Path,
) -> None:
    ensure_self_signed(str(tmp_path / "s.pem"), str(tmp_path / "s.key"), "b.example")
    server = ServerTLS(server_context(str(tmp_path / "s.pem"), str(tmp_path / "s.key")))
    client, cin, cout = _client(tmp_path, with_cert=True)
    _handshake(server, client, cin, cout)
    chain = server.peer_chain()
    assert chain is not None
    leaf, _ = chain
    assert identity_matches(leaf, "a.example")
    client.write(b"<stream:stream>")
    assert server.receive_data(cout.read()) == b"<stream:stream>"
    server.send(b"<stream:features/>")
    cin.write(server.data_to_send())
    assert client.read(100) == b"<stream:features/>"


def test_no_client_certificate_completes_the_handshake_too(tmp_path: Path) -> None:
    ensure_self_signed(str(tmp_path / "s.pem"), str(tmp_path / "s.key"), "b.example")
    server = ServerTLS(server_context(str(tmp_path / "s.pem"), str(tmp_path / "s.key"),
                                      alpn=[b"xmpp-server"]))
    client, cin, cout = _client(tmp_path, with_cert=False)
    _handshake(server, client, cin, cout)
    assert server.peer_chain() is None
    assert server.version in ("TLSv1.2", "TLSv1.3")
