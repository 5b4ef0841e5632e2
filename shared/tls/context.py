"""TLS for c2s: a server context (TLS 1.2+, no compression) and a self-signed certificate;
TLS to the cluster's own servers (NATS, Redis): a verifying client context, and a development
CA with the server certificates it signs for a local cluster.

RFC 6120 §13.9.4 and RFC 7525 (BCP 195): TLS 1.2 or newer, forward-secret AEAD suites only
(ECDHE with AES-GCM or ChaCha20-Poly1305; TLS 1.3 suites are all of that kind), no
compression (CRIME), no renegotiation.  A certificate that is expired or not yet valid stops
the service at start with an error naming the file and the dates, instead of every client
failing its handshake later.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def ensure_self_signed(cert_path: str, key_path: str, domain: str,
                       also: Iterable[str] = ()) -> bool:
    """Write a self-signed certificate for ``domain`` (and its subdomains, and the domains
    ``also`` names: a cluster's service domains, RFC 6125 §6.4 reference identifiers of
    each) unless both files exist; True if written."""
    cert, key = Path(cert_path), Path(key_path)
    if cert.exists() and key.exists():
        return False
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    builder = _builder(name, name, private.public_key(), days=365).add_extension(
        x509.SubjectAlternativeName(_alt_names(
            [domain, f"*.{domain}", *(n for n in also if n != domain), "127.0.0.1"])),
        critical=False,
    )
    _write_pair(cert, key, builder.sign(private, hashes.SHA256()), private)
    return True


def ensure_dev_ca(cert_path: str, key_path: str, name: str = "stanzad development CA") -> bool:
    """Write a self-signed CA certificate (for signing the certificates of a local cluster's
    servers, `ensure_issued`) unless both files exist and it is still valid; True if
    written."""
    cert, key = Path(cert_path), Path(key_path)
    if cert.exists() and key.exists() and _valid_for_a_day(cert):
        return False
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        _builder(subject, subject, private.public_key(), days=3650)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False,
        ), critical=True)
    )
    _write_pair(cert, key, builder.sign(private, hashes.SHA256()), private)
    return True


def ensure_issued(cert_path: str, key_path: str, ca_cert_path: str, ca_key_path: str,
                  names: list[str]) -> bool:
    """Write a server certificate for ``names`` (DNS names or IP addresses) signed by the CA
    of ``ca_cert_path``, unless both files exist, it was issued by that CA and is still
    valid; True if written."""
    cert, key = Path(cert_path), Path(key_path)
    ca = x509.load_pem_x509_certificate(Path(ca_cert_path).read_bytes())
    if cert.exists() and key.exists() and _valid_for_a_day(cert):
        current = x509.load_pem_x509_certificate(cert.read_bytes())
        try:
            current.verify_directly_issued_by(ca)  # names, and the signature by its key
            return False
        except (ValueError, TypeError, InvalidSignature):
            pass
    ca_key = serialization.load_pem_private_key(Path(ca_key_path).read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key_path}: not an EC private key")
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    builder = (
        _builder(subject, ca.subject, private.public_key(), days=365)
        .add_extension(x509.SubjectAlternativeName(_alt_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
    )
    _write_pair(cert, key, builder.sign(ca_key, hashes.SHA256()), private)
    return True


def _builder(subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey,
             days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _alt_names(names: list[str]) -> list[x509.GeneralName]:
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    return alt


def _valid_for_a_day(cert: Path) -> bool:
    try:
        check_certificate(str(cert), datetime.datetime.now(datetime.UTC)
                          + datetime.timedelta(days=1))
    except CertificateProblem:
        return False
    return True


def _write_pair(cert: Path, key: Path, certificate: x509.Certificate,
                private: ec.EllipticCurvePrivateKey) -> None:
    """The private key (mode 0600) and the certificate, as PEM."""
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
    os.chmod(key, 0o600)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def client_context(cafile: str = "", certfile: str = "", keyfile: str = "") -> ssl.SSLContext:
    """TLS to a server of the cluster (NATS, Redis): TLS 1.2 or newer, the server's
    certificate verified against ``cafile`` (the system's trust store when empty) and its
    name checked; ``certfile``/``keyfile``: a client certificate, for servers that ask for
    one (mutual TLS)."""
    ctx = ssl.create_default_context(cafile=cafile or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    if certfile:
        ctx.load_cert_chain(certfile, keyfile or None)
    return ctx


# TLS 1.2 suites (OpenSSL names): ECDHE key exchange, AEAD ciphers only.
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1"


class CertificateProblem(ValueError):
    """The configured certificate cannot be served; the message names the file."""


def check_certificate(cert_path: str, now: datetime.datetime | None = None) -> x509.Certificate:
    """The first certificate of the PEM chain, if it is valid now; else CertificateProblem."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateProblem(f"{cert_path}: cannot read the certificate: {exc}") from None
    now = now or datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now:
        raise CertificateProblem(
            f"{cert_path}: the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} "
            "UTC (STANZAD_TLS_CERT); renew it"
        )
    if cert.not_valid_before_utc > now:
        raise CertificateProblem(
            f"{cert_path}: the certificate is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (STANZAD_TLS_CERT)"
        )
    return cert


def certificate_expiry(cert_path: str) -> float:
    """notAfter of the first certificate of the PEM chain at ``cert_path``, as Unix time
    (the TLS certificate expiry gauge)."""
    return check_certificate(cert_path).not_valid_after_utc.timestamp()


def server_context(
    cert_path: str, key_path: str, *, session_tickets: int = 0
) -> ssl.SSLContext:
    """TLS 1.2 or newer, modern suites, no compression, no renegotiation (RFC 7525).

    ``session_tickets``: TLS 1.3 NewSessionTicket messages sent after each full handshake
    (RFC 8446 §4.6.1; OpenSSL sends 2 unless told).  None by default: making two costs the
    server a fifth of its handshake CPU, and a client could resume only on the same connection
    manager process, before its next restart or SIGHUP (the ticket key belongs to the
    context); loadtest/RESULTS.md, "session 3 — TLS backend".
    """
    check_certificate(cert_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    )
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.num_tickets = session_tickets
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateProblem(f"{cert_path} / {key_path}: {exc}") from None
    return ctx
