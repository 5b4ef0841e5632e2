"""shared.tls.certs: a certificates directory in cert-manager's layout, one context per
domain picked by SNI (RFC 6066 §3), reloaded when its files change, and clear errors."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from shared.tls.certs import CERT_FILE, KEY_FILE, DomainCertificates
from shared.tls.context import CertificateProblem, ensure_dev_ca, ensure_issued, server_context


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    d.mkdir()
    ensure_dev_ca(str(d / "ca.crt"), str(d / "ca.key"))
    return d


def _issue(certs: Path, ca: Path, domain: str) -> None:
    d = certs / domain
    d.mkdir(parents=True, exist_ok=True)
    for name in (CERT_FILE, KEY_FILE):
        (d / name).unlink(missing_ok=True)
    ensure_issued(str(d / CERT_FILE), str(d / KEY_FILE), str(ca / "ca.crt"), str(ca / "ca.key"),
                  [domain, f"*.{domain}"])


def _serial(certs: Path, domain: str) -> int:
    return x509.load_pem_x509_certificate((certs / domain / CERT_FILE).read_bytes()).serial_number


def test_loads_each_domain_and_picks_by_sni_parents_included(tmp_path: Path, ca: Path) -> None:
    certs = tmp_path / "certs"
    for domain in ("a.example", "b.example"):
        _issue(certs, ca, domain)
    (certs / "..data").mkdir()  # what a Secret volume also holds
    expiries: dict[str, float] = {}
    dc = DomainCertificates(str(certs), server_context, lambda d, t: expiries.update({d: t}))
    dc.load()
    assert sorted(dc.loaded) == ["a.example", "b.example"] == sorted(expiries)
    a = dc.context_for("A.Example.")
    assert a is not None and a is dc.loaded["a.example"].context
    assert dc.context_for("conference.b.example") is dc.loaded["b.example"].context
    assert dc.context_for("c.example") is None and dc.context_for(None) is None


def test_refresh_reloads_changed_files_only_and_forgets_removed(tmp_path: Path, ca: Path) -> None:
    certs = tmp_path / "certs"
    for domain in ("a.example", "b.example"):
        _issue(certs, ca, domain)
    dc = DomainCertificates(str(certs), server_context)
    dc.load()
    assert dc.refresh() == []
    _issue(certs, ca, "a.example")  # rotated (new files, new inodes)
    _issue(certs, ca, "n.example")
    assert sorted(dc.refresh()) == ["a.example", "n.example"]
    for name in (CERT_FILE, KEY_FILE):
        (certs / "b.example" / name).unlink()
    os.rmdir(certs / "b.example")
    assert dc.refresh() == ["b.example"] and "b.example" not in dc.loaded


def test_a_bad_certificate_is_an_error_at_start_and_keeps_the_old_one_later(
    tmp_path: Path, ca: Path
) -> None:
    certs = tmp_path / "certs"
    _issue(certs, ca, "a.example")
    (certs / "a.example" / KEY_FILE).unlink()
    with pytest.raises(CertificateProblem, match="missing"):
        DomainCertificates(str(certs), server_context).load()
    with pytest.raises(CertificateProblem, match="not a directory"):
        DomainCertificates(str(tmp_path / "nowhere"), server_context).load()
    _issue(certs, ca, "a.example")
    dc = DomainCertificates(str(certs), server_context)
    dc.load()
    old = dc.loaded["a.example"].context
    (certs / "a.example" / CERT_FILE).write_text("not a certificate")
    assert dc.refresh() == []
    assert dc.context_for("a.example") is old


async def test_sni_callback_serves_the_domain_certificate_to_a_verifying_client(
    tmp_path: Path, ca: Path
) -> None:
    certs = tmp_path / "certs"
    for domain in ("a.example", "b.example"):
        _issue(certs, ca, domain)
    default_dir = tmp_path / "default"
    _issue(default_dir, ca, "default.example")
    default = server_context(str(default_dir / "default.example" / CERT_FILE),
                             str(default_dir / "default.example" / KEY_FILE))
    dc = DomainCertificates(str(certs), server_context)
    dc.load()
    dc.install(default)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=default)
    port = server.sockets[0].getsockname()[1]
    try:
        for name in ("b.example", "a.example"):
            client = ssl.create_default_context(cafile=str(ca / "ca.crt"))  # checks the name
            _, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname=name), 10)
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
            assert x509.load_der_x509_certificate(der).serial_number == _serial(certs, name)
    finally:
        server.close()
        await server.wait_closed()
