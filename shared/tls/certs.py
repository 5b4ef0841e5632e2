"""Certificates per domain, chosen by SNI (RFC 6066 §3), reloaded when they change on disk.

A directory (``STANZAD_TLS_CERTS_DIR``) holds one subdirectory per domain, named after it,
with the files of a Kubernetes TLS Secret as cert-manager writes them: ``tls.crt`` (the
chain) and ``tls.key``.  Mounted as Secret volumes, they are replaced in place when
cert-manager renews them.  `DomainCertificates` builds what a service makes of each
domain's pair through its factory: the connection manager one server context (the same
settings as the default one, shared/tls/context.py), the s2s gateway its contexts both ways
(services/s2s_gateway/service.py).  `context_for` finds a name's (a subdomain of a domain,
``conference.example.org``, gets the domain's); `install` puts an SNI callback on a default
``ssl`` context that switches a handshake to the context of the name the client asked for
(pyOpenSSL contexts: shared/tls/memory.py `choose_by_sni`), and `refresh`
rebuilds the contexts whose files changed: new connections get the new certificate, open
ones keep theirs.  A missing, unreadable or expired certificate is an error at start
(CertificateProblem naming the file) and, later, a kept old certificate and a log line.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Generic, TypeVar

from shared.tls.context import CertificateProblem, certificate_expiry

log = logging.getLogger(__name__)

CERT_FILE: Final = "tls.crt"  # cert-manager's Secret keys (kubernetes.io/tls)
KEY_FILE: Final = "tls.key"

T = TypeVar("T")  # what the factory makes of a (cert, key) pair: a context, or several


@dataclass(slots=True)
class _Loaded(Generic[T]):
    context: T
    stamp: tuple[float, float, int, int]  # mtimes and inodes of the two files
    expiry: float


def _stamp(cert: Path, key: Path) -> tuple[float, float, int, int]:
    a, b = cert.stat(), key.stat()
    return (a.st_mtime, b.st_mtime, a.st_ino, b.st_ino)


class DomainCertificates(Generic[T]):
    """The contexts of the domains of a certificates directory, picked by SNI."""

    def __init__(self, directory: str, factory: Callable[[str, str], T],
                 on_expiry: Callable[[str, float], None] | None = None) -> None:
        self.directory = Path(directory) if directory else None
        self._factory = factory  # (cert path, key path) -> the domain's configured context(s)
        self._on_expiry = on_expiry
        self.loaded: dict[str, _Loaded[T]] = {}

    def domains(self) -> list[str]:
        if self.directory is None:
            return []
        try:
            entries = os.listdir(self.directory)
        except OSError as exc:
            raise CertificateProblem(f"{self.directory}: {exc}") from None
        # Secret volumes also hold ..data and timestamped folders: only domain names count
        return sorted(e for e in entries if not e.startswith(".")
                      and (self.directory / e / CERT_FILE).exists())

    def load(self) -> None:
        """Load every domain's certificate; CertificateProblem names the first bad one."""
        if self.directory is None:
            return
        if not self.directory.is_dir():
            raise CertificateProblem(f"{self.directory}: not a directory (STANZAD_TLS_CERTS_DIR)")
        for domain in self.domains():
            self.loaded[domain] = self._load(domain)

    def _load(self, domain: str) -> _Loaded[T]:
        assert self.directory is not None
        cert, key = self.directory / domain / CERT_FILE, self.directory / domain / KEY_FILE
        if not key.exists():
            raise CertificateProblem(f"{key}: missing (the key of {cert})")
        stamp = _stamp(cert, key)
        context = self._factory(str(cert), str(key))  # checks dates; raises on a bad pair
        expiry = certificate_expiry(str(cert))
        if self._on_expiry is not None:
            self._on_expiry(domain, expiry)
        return _Loaded(context, stamp, expiry)

    def refresh(self) -> list[str]:
        """Reload the domains whose files changed (and new ones); the domains reloaded.  A
        certificate that fails keeps the old one in service."""
        if self.directory is None:
            return []
        changed = []
        try:
            present = self.domains()
        except CertificateProblem as exc:
            log.error("certificates directory unreadable, keeping the loaded ones: %s", exc)
            return []
        for domain in present:
            d = self.directory / domain
            known = self.loaded.get(domain)
            try:
                if known is not None and _stamp(d / CERT_FILE, d / KEY_FILE) == known.stamp:
                    continue
                self.loaded[domain] = self._load(domain)
                changed.append(domain)
                log.info("loaded the certificate of %s from %s", domain, d)
            except (OSError, CertificateProblem) as exc:
                log.error("certificate of %s not reloaded (the old one stays): %s", domain, exc)
        for gone in self.loaded.keys() - set(present):
            del self.loaded[gone]
            changed.append(gone)
        return changed

    def context_for(self, server_name: str | None) -> T | None:
        """The context for an SNI name: the domain's, or a parent domain's (a service
        subdomain), or None (the default context serves)."""
        if not server_name or not self.loaded:
            return None
        name = server_name.rstrip(".").lower()
        while name:
            found = self.loaded.get(name)
            if found is not None:
                return found.context
            name = name.partition(".")[2]
        return None

    def install(self: DomainCertificates[ssl.SSLContext], default: ssl.SSLContext) -> None:
        """Make ``default`` hand each handshake to the context its SNI names."""

        def pick(conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                 _ctx: ssl.SSLContext) -> None:
            ctx = self.context_for(server_name)
            if ctx is not None:
                conn.context = ctx
            return None

        default.sni_callback = pick  # type: ignore[assignment]
