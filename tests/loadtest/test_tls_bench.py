"""loadtest.tls_bench: every backend handshakes and carries records (no timing asserted)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from loadtest import tls_bench


@pytest.fixture(scope="module")
def setup() -> tuple[dict[str, Callable[[], tls_bench.Session]], tls_bench.Client]:
    cert, key = tls_bench.certificate()
    return tls_bench.makers(cert, key), tls_bench.Client(cert)


@pytest.mark.parametrize("backend", ["ssl", "ssl-tickets2", "pyopenssl", "pyopenssl-cffi"])
def test_every_backend_is_measured(
    setup: tuple[dict[str, Callable[[], tls_bench.Session]], tls_bench.Client],
    backend: str,
) -> None:
    makers, client = setup
    server = makers[backend]()
    peer, cpu = client.connect(server)  # asserts a stanza each way
    assert server.established and peer.established and cpu >= 0
    assert isinstance(tls_bench.handshakes(makers[backend], client, 2), float)
    assert isinstance(tls_bench.records(makers[backend], client, 10), float)
