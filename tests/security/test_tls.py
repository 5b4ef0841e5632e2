"""TLS of a running connection manager: expired certificate at start, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.support.cluster import Cluster
from tests.support.tls import write_certificate
from tests.support.xmpp import RawClient


async def _served_serial(port: int) -> int:
    raw = RawClient("127.0.0.1", port)
    try:
        await raw.open()
        await raw.starttls()
        assert raw.writer is not None
        der = raw.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        await raw.close()
    from cryptography import x509

    return int(x509.load_der_x509_certificate(der).serial_number)


async def test_rfc7525_expired_certificate_stops_the_service_with_a_clear_error(
    cluster: Cluster,
) -> None:
    cert, key = cluster.workdir / "expired" / "cert.pem", cluster.workdir / "expired" / "key.pem"
    write_certificate(cert, key, "localhost", days_from=-60, days_to=-2)
    with pytest.raises(RuntimeError, match="the certificate expired on"):
        await asyncio.to_thread(cluster.start_cm, "cm-expired", STANZAD_TLS_CERT=str(cert),
                                STANZAD_TLS_KEY=str(key))
    assert cluster.procs["cm-expired"].returncode not in (None, 0)


async def test_certificate_is_reloaded_on_sighup(cluster: Cluster) -> None:
    cert, key = cluster.workdir / "reload" / "cert.pem", cluster.workdir / "reload" / "key.pem"
    first = write_certificate(cert, key, "localhost")
    port = await asyncio.to_thread(cluster.start_cm, "cm-reload", STANZAD_TLS_CERT=str(cert),
                                   STANZAD_TLS_KEY=str(key))
    assert await _served_serial(port) == first
    second = write_certificate(cert, key, "localhost")
    cluster.procs["cm-reload"].send_signal(signal.SIGHUP)
    for _ in range(50):
        if await _served_serial(port) == second:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the new certificate was never served")
    # a broken file on the next reload keeps the current certificate
    cert.write_text("not a certificate")
    cluster.procs["cm-reload"].send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)
    assert await _served_serial(port) == second
    assert cluster.procs["cm-reload"].poll() is None

