"""loadtest.tls_bench: every backend handshakes and carries records (no timing asserted)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from loadtest import tls_bench


@pytest.fixture(scope="module")
def setup() -> tuple[dict[str, Callable[[], tls_bench.Session]], tls_bench.Client]:
    cert, key = tls_bench.certificate()
    return tls_bench.makers(cert, key), tls_bench.Client(cert)


@pytest.mark.parametrize("backend", ["ssl", "ssl-lean", "ssl-tickets2"])
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


def test_only_the_stdlib_backends_are_left() -> None:
    cert, key = tls_bench.certificate()
    assert set(tls_bench.makers(cert, key)) == {"ssl", "ssl-lean", "ssl-tickets2"}


def test_lean_records_are_measured_on_our_record_layer(
    setup: tuple[dict[str, Callable[[], tls_bench.Session]], tls_bench.Client],
) -> None:
    """`records` hands a lean session over first: its records then run on Records13."""
    makers, client = setup
    made: list[tls_bench.Session] = []

    def make() -> tls_bench.Session:
        made.append(makers["ssl-lean"]())
        return made[-1]

    tls_bench.records(make, client, 5)
    assert made and getattr(made[0], "lean", False)
