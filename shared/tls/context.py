"""TLS for c2s: a server context (TLS 1.2+, no compression) and a self-signed certificate.

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
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(domain), x509.DNSName(f"*.{domain}")]
    alt.extend(x509.DNSName(name) for name in also if name != domain)
    alt.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(private, hashes.SHA256())
    )
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key, 0o600)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return True


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
