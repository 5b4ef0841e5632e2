"""Is a peer server's certificate valid for the domain it claims?  (RFC 6120 §13.7.2,
RFC 6125 §6, XEP-0178 §3; pure computation on `cryptography` objects, no I/O.)

Two questions, both must be yes:

* the chain: it leads to a root of the system trust store (web PKI rules, through
  `cryptography.x509.verification`), or to a certificate configured as trusted for that
  domain (STANZAD_S2S_TRUSTED_CERTS: a private CA, or a self-signed certificate pinned as
  it is).  The extended key usage may be serverAuth or clientAuth: servers present their
  server certificate when they connect to another server.
* the identity (RFC 6120 §13.7.1.2, RFC 6125 §6.4): a SAN dNSName equal to the domain, or a
  wildcard ``*.parent`` for a domain one label below ``parent``; an SRVName
  ``_xmpp-server.domain`` (RFC 4985); or an id-on-xmppAddr equal to the domain.  The
  subject's common name is not looked at (RFC 6125 §6.4.4 allows it only as a fallback).
"""

from __future__ import annotations

import datetime
import logging
import ssl
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

log = logging.getLogger(__name__)

ID_ON_XMPPADDR: Final = ObjectIdentifier("1.3.6.1.5.5.7.8.5")
ID_ON_DNSSRV: Final = ObjectIdentifier("1.3.6.1.5.5.7.8.7")
SRV_PREFIXES: Final = ("_xmpp-server.", "_xmpps-server.")
_ALLOWED_EKU: Final = frozenset({ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH})


# ---- identity (RFC 6125, XEP-0178) ------------------------------------------------------------


def _der_string(value: bytes) -> str | None:
    """The text of a DER UTF8String (0x0c) or IA5String (0x16); None for anything else."""
    if len(value) < 2 or value[0] not in (0x0C, 0x16):
        return None
    length, offset = value[1], 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or len(value) < 2 + n:
            return None
        length, offset = int.from_bytes(value[2 : 2 + n], "big"), 2 + n
    if len(value) != offset + length:
        return None
    try:
        return value[offset:].decode("utf-8" if value[0] == 0x0C else "ascii")
    except UnicodeDecodeError:
        return None


def _dns_matches(pattern: str, domain: str) -> bool:
    """RFC 6125 §6.4.3: exact, or '*' as the whole leftmost label for exactly one label."""
    pattern = pattern.lower().rstrip(".")
    if pattern == domain:
        return True
    if pattern.startswith("*.") and "*" not in pattern[2:]:
        head, dot, rest = domain.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:] and rest.count(".") >= 1
    return False


def identities(cert: x509.Certificate) -> tuple[list[str], list[str], list[str]]:
    """(dNSNames, SRVNames, xmppAddrs) of the certificate's subjectAltName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], [], []
    dns = [str(name) for name in san.get_values_for_type(x509.DNSName)]
    srv, xmpp = [], []
    for other in san.get_values_for_type(x509.OtherName):
        text = _der_string(other.value)
        if text is None:
            continue
        if other.type_id == ID_ON_DNSSRV:
            srv.append(text)
        elif other.type_id == ID_ON_XMPPADDR:
            xmpp.append(text)
    return dns, srv, xmpp


def identity_matches(cert: x509.Certificate, domain: str) -> bool:
    """Does the certificate name ``domain`` (an A-label, lower case) per XEP-0178 §3?"""
    domain = domain.lower().rstrip(".")
    try:
        ascii_domain = domain.encode("idna").decode()
    except UnicodeError:
        ascii_domain = domain
    dns, srv, xmpp = identities(cert)
    if any(_dns_matches(p, ascii_domain) for p in dns):
        return True
    for name in srv:
        lowered = name.lower().rstrip(".")
        for prefix in SRV_PREFIXES:
            if lowered.startswith(prefix) and lowered[len(prefix):] in (ascii_domain, domain):
                return True
    return any(addr.lower() == domain for addr in xmpp)


# ---- the chain --------------------------------------------------------------------------------


def _check_eku(_policy: object, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None
               ) -> None:
    if eku is not None and not _ALLOWED_EKU & set(eku):
        raise ValueError("neither serverAuth nor clientAuth")


def load_pem_bundle(path: str) -> list[x509.Certificate]:
    """The certificates of a PEM file; ones `cryptography` cannot parse are skipped."""
    out: list[x509.Certificate] = []
    text = Path(path).read_bytes()
    marker = b"-----BEGIN CERTIFICATE-----"
    with warnings.catch_warnings():
        # distribution bundles hold a few old roots with non-positive serial numbers
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        for block in text.split(marker)[1:]:
            try:
                out.append(x509.load_pem_x509_certificate(marker + block))
            except ValueError:
                continue
    return out


def system_roots() -> list[x509.Certificate]:
    """The trust store OpenSSL uses by default (SSL_CERT_FILE or the distribution's bundle)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return load_pem_bundle(candidate)
    log.warning("no system trust store found: only STANZAD_S2S_TRUSTED_CERTS is trusted")
    return []


class CertificateTrust:
    """The roots we trust for s2s peers: the system's, plus per-domain extra ones."""

    def __init__(
        self, roots: Iterable[x509.Certificate], per_domain: Mapping[str, list[x509.Certificate]]
    ) -> None:
        self.roots = list(roots)
        self.per_domain = {d.lower(): list(certs) for d, certs in per_domain.items()}
        self._stores: dict[str, verification.Store | None] = {}
        ee = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
            x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, _check_eku
        )
        self._ee_policy = ee
        self._ca_policy = verification.ExtensionPolicy.webpki_defaults_ca()

    @classmethod
    def load(cls, trusted_files: Mapping[str, str], system: bool = True) -> CertificateTrust:
        """The system store (``system``) and {domain: PEM file}; unreadable files raise
        ValueError naming the file."""
        per_domain = {}
        for domain, path in trusted_files.items():
            try:
                certs = load_pem_bundle(path)
            except OSError as exc:
                raise ValueError(f"{path}: {exc}") from None
            if not certs:
                raise ValueError(f"{path}: no certificate in it")
            per_domain[domain] = certs
        return cls(system_roots() if system else [], per_domain)

    def _store(self, domain: str) -> verification.Store | None:
        if domain not in self._stores:
            certs = self.roots + self.per_domain.get(domain, [])
            self._stores[domain] = verification.Store(certs) if certs else None
        return self._stores[domain]

    def chain_valid(
        self, leaf: x509.Certificate, intermediates: Iterable[x509.Certificate], domain: str,
        now: datetime.datetime | None = None,
    ) -> bool:
        domain = domain.lower()
        now = now or datetime.datetime.now(datetime.UTC)
        # a certificate trusted as it is for this domain (self-signed, pinned)
        if leaf in self.per_domain.get(domain, ()):
            return leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc
        store = self._store(domain)
        if store is None:
            return False
        verifier = (
            verification.PolicyBuilder()
            .store(store)
            .time(now)
            .extension_policies(ca_policy=self._ca_policy, ee_policy=self._ee_policy)
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, list(intermediates))
        except verification.VerificationError as exc:
            log.debug("certificate chain for %s not valid: %s", domain, exc)
            return False
        return True

    def peer(self, leaf: x509.Certificate, intermediates: Iterable[x509.Certificate]
             ) -> CheckedPeer:
        return CheckedPeer(self, leaf, tuple(intermediates))


class CheckedPeer:
    """A peer's certificate chain, checked lazily per claimed domain (results kept): the
    `shared.xmpp.s2s.PeerCertificate` of a stream."""

    def __init__(self, trust: CertificateTrust, leaf: x509.Certificate,
                 intermediates: tuple[x509.Certificate, ...]) -> None:
        self.trust = trust
        self.leaf = leaf
        self.intermediates = intermediates
        self._results: dict[str, bool] = {}

    def valid_for(self, domain: str) -> bool:
        domain = domain.lower()
        if domain not in self._results:
            self._results[domain] = identity_matches(self.leaf, domain) and (
                self.trust.chain_valid(self.leaf, self.intermediates, domain)
            )
        return self._results[domain]
