"""shared.tls.binding: the server's channel binding data (RFC 5929, RFC 9266) against what an
independent client computes: pyOpenSSL (on the OpenSSL that ``cryptography`` bundles, not the
system one CPython's ``ssl`` uses) over memory BIOs."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from shared.tls import binding
from shared.tls.context import ensure_self_signed, server_context
from shared.tls.session import TLSSession


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d: Path = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    ensure_self_signed(cert, key, "example.org")
    return cert, key


def _handshake(cert: tuple[str, str], version: int) -> tuple[TLSSession, SSL.Connection]:
    server = TLSSession(server_context(*cert))
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_max_proto_version(version)
    client = SSL.Connection(ctx, None)
    client.set_connect_state()
    for _ in range(10):
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        with contextlib.suppress(SSL.WantReadError):  # nothing to send
            server.receive(client.bio_read(65536))
        out = server.data_to_send()
        if out:
            client.bio_write(out)
        if server.established:
            try:
                client.do_handshake()
                break
            except SSL.WantReadError:
                continue
    assert server.established
    return server, client


def _end_point(cert: tuple[str, str]) -> bytes:
    return binding.server_end_point_of_file(cert[0])


@pytest.mark.parametrize("version", [SSL.TLS1_3_VERSION, SSL.TLS1_2_VERSION])
def test_tls_exporter_matches_the_peers(cert: tuple[str, str], version: int) -> None:
    # RFC 9266 §2: label "EXPORTER-Channel-Binding", no context, 32 bytes; on TLS 1.2 only
    # with the extended master secret, which both OpenSSLs negotiate by default (RFC 7627)
    server, client = _handshake(cert, version)
    cb = server.channel_binding(_end_point(cert))
    assert cb is not None and "tls-exporter" in cb.types
    want = client.export_keying_material(b"EXPORTER-Channel-Binding", 32)
    assert cb.data("tls-exporter") == want and len(want) == 32


def test_tls_unique_only_on_tls_1_2(cert: tuple[str, str]) -> None:
    # RFC 5929 §3.1: the first Finished of the handshake, the client's on a full one
    server, client = _handshake(cert, SSL.TLS1_2_VERSION)
    cb = server.channel_binding(_end_point(cert))
    assert cb is not None
    assert cb.types == ("tls-exporter", "tls-unique", "tls-server-end-point")
    assert cb.data("tls-unique") == client.get_finished()
    server13, _ = _handshake(cert, SSL.TLS1_3_VERSION)
    cb13 = server13.channel_binding(_end_point(cert))
    assert cb13 is not None
    assert cb13.types == ("tls-exporter", "tls-server-end-point")  # RFC 9266 §1
    assert cb13.data("tls-unique") is None


def test_tls_server_end_point_is_the_hash_the_client_sees(cert: tuple[str, str]) -> None:
    server, client = _handshake(cert, SSL.TLS1_3_VERSION)
    cb = server.channel_binding(_end_point(cert))
    assert cb is not None
    peer = client.get_peer_certificate()
    assert peer is not None
    der = peer.to_cryptography().public_bytes(serialization.Encoding.DER)
    # ECDSA with SHA-256 (context.py's certificates): SHA-256 of the DER (RFC 5929 §4.1)
    assert cb.data("tls-server-end-point") == hashlib.sha256(der).digest()


def _certificate(key: object, algorithm: hashes.HashAlgorithm | None) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.org")])
    now = datetime.datetime.now(datetime.UTC)
    built = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
             .public_key(key.public_key())  # type: ignore[attr-defined]
             .serial_number(1).not_valid_before(now)
             .not_valid_after(now + datetime.timedelta(days=1))
             .sign(key, algorithm))  # type: ignore[arg-type]
    return built.public_bytes(serialization.Encoding.DER)


def test_server_end_point_hash_function_rfc_5929_4_1() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sha384 = _certificate(rsa_key, hashes.SHA384())
    assert binding.server_end_point(sha384) == hashlib.sha384(sha384).digest()
    ed = _certificate(ed25519.Ed25519PrivateKey.generate(), None)  # no hash: SHA-256
    assert binding.server_end_point(ed) == hashlib.sha256(ed).digest()


def test_no_binding_before_the_handshake(cert: tuple[str, str]) -> None:
    assert TLSSession(server_context(*cert)).channel_binding(b"x") is None
