"""loadtest.tls_libs: each installed backend talks TLS to CPython's ``ssl`` client (tiny run).

Optional libraries (libwolfssl, python-mbedtls, the PyPI ``wolfssl`` module) are skipped when
they are not installed; no memory or timing is asserted, only that the measurement runs and
the sessions carried a record each way (RFC 8446 §5 records, RFC 5246 §6.2 for TLS 1.2).
"""

from __future__ import annotations

import pytest

from loadtest import tls_libs


@pytest.fixture(scope="module")
def cert_key() -> tuple[str, str]:
    return tls_libs.certificate()


@pytest.mark.parametrize("backend", tls_libs.BACKENDS)
def test_every_backend_measures_or_skips(backend: str, cert_key: tuple[str, str]) -> None:
    if not tls_libs._available(backend):
        pytest.skip(f"{backend}: its library is not installed")
    row = tls_libs.run(backend, 3, 2, 5, *cert_key)
    assert row is not None
    assert row.negotiated.upper().startswith("TLS")
    assert isinstance(row.rss_kib, float) and isinstance(row.heap_kib, float)


@pytest.mark.parametrize("backend", ["openssl", "wolfssl", "mbedtls"])
def test_a_record_each_way_after_the_handshake(backend: str, cert_key: tuple[str, str]) -> None:
    build = tls_libs.makers(*cert_key)[backend]
    if build is None:
        pytest.skip(f"{backend}: its library is not installed")
    server = build()()
    client, _ = tls_libs.Client(cert_key[0]).connect(server)  # raises TLSFailed otherwise
    assert server.established and client.established
    client.send(b"<presence/>")
    assert server.receive(client.data_to_send()) == b"<presence/>"
    server.send(b"<iq type='result' id='1'/>")
    assert client.receive(server.data_to_send()) == b"<iq type='result' id='1'/>"


def test_a_broken_handshake_is_an_error_not_a_hang(cert_key: tuple[str, str]) -> None:
    build = tls_libs.makers(*cert_key)["wolfssl"]
    if build is None:
        pytest.skip("libwolfssl is not installed")
    server = build()()
    with pytest.raises(tls_libs.TLSFailed):
        server.receive(b"\x16\x03\x01\x00\x05hello")  # a ClientHello that is not one


@pytest.mark.parametrize("backend", ["openssl", "wolfssl", "wolfssl-native", "mbedtls"])
def test_a_burst_larger_than_a_record_arrives_whole(
    backend: str, cert_key: tuple[str, str]
) -> None:
    """RFC 8446 §5.1: 20 KB is split over two records and joined again on the other side."""
    build = tls_libs.makers(*cert_key)[backend]
    if build is None or not tls_libs._available(backend):
        pytest.skip(f"{backend}: its library is not installed")
    rss, heap = tls_libs.memory(build(), tls_libs.Client(cert_key[0]), 2, burst=20_000)
    assert isinstance(rss, float) and isinstance(heap, float)
