"""Certificates per domain (shared/tls/certs.py): a connection manager with a certificates
directory in cert-manager's layout serves each domain's certificate by SNI (RFC 6066 §3),
checked by a verifying client, and a certificate replaced on disk is served to new
connections without a restart."""

from __future__ import annotations

import asyncio
import shutil
import signal
import ssl
from pathlib import Path

from cryptography import x509

from shared.tls.context import ensure_dev_ca, ensure_issued
from tests.support.cluster import Cluster
from tests.support.xmpp import eventually

OTHER = "sni-other.example"


def _issue(directory: Path, ca: Path, domain: str) -> None:
    d = directory / domain
    d.mkdir(parents=True, exist_ok=True)
    for name in ("tls.crt", "tls.key"):
        (d / name).unlink(missing_ok=True)
    # cert-manager writes the Secret's keys tls.crt / tls.key
    ensure_issued(str(d / "tls.crt"), str(d / "tls.key"), str(ca / "ca.crt"),
                  str(ca / "ca.key"), [domain])


async def _served(port: int, ca: Path, domain: str) -> x509.Certificate:
    """Direct TLS (XEP-0368) with SNI ``domain``; the client verifies the name itself."""
    ctx = ssl.create_default_context(cafile=str(ca / "ca.crt"))
    ctx.check_hostname = True
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=domain), 10)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(
            f"<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' "
            "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>".encode())
        await writer.drain()
        assert b"<stream:stream" in await asyncio.wait_for(reader.read(4096), 10)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()


async def test_each_domain_gets_its_certificate_by_sni_and_rotation_needs_no_restart(
    cluster: Cluster, tmp_path: Path
) -> None:
    ca = tmp_path / "ca"
    ca.mkdir()
    ensure_dev_ca(str(ca / "ca.crt"), str(ca / "ca.key"))
    certs = tmp_path / "certs"
    for domain in (cluster.domain, OTHER):
        _issue(certs, ca, domain)
    cluster.start_cm("cm-sni", STANZAD_TLS_CERTS_DIR=str(certs), STANZAD_TLS_RELOAD_S="0.5")
    port = cluster.tls_ports["cm-sni"]
    try:
        main = await _served(port, ca, cluster.domain)
        other = await _served(port, ca, OTHER)
        assert main.subject.rfc4514_string() == f"CN={cluster.domain}"
        assert other.subject.rfc4514_string() == f"CN={OTHER}"
        # a service subdomain of a domain is served the domain's certificate
        assert await _served_name(port, ca, f"conference.{OTHER}") == OTHER

        old_serial = other.serial_number
        _issue(certs, ca, OTHER)  # cert-manager renewed it

        async def rotated() -> bool:
            return (await _served(port, ca, OTHER)).serial_number != old_serial

        await eventually(rotated, timeout=15, what="the renewed certificate served")
    finally:
        cluster.kill("cm-sni", signal.SIGTERM)
        shutil.rmtree(certs, ignore_errors=True)


async def _served_name(port: int, ca: Path, server_name: str) -> str:
    """The CN served for an SNI name (no hostname check: a subdomain of the domain)."""
    ctx = ssl.create_default_context(cafile=str(ca / "ca.crt"))
    ctx.check_hostname = False
    _, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=server_name), 10)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der)
        return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)
    finally:
        writer.close()
