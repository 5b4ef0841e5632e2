"""Extra connection managers on the session's cluster, with limits small enough to hit fast.

`tight_cm` has tiny limits of every kind; `open_cm` reads without rate limits but has the
smallest write buffer, so that one test can flood a client that does not read.  Both share
NATS, Redis and the router with the default `cm-1` of tests/conftest.py.
"""

from __future__ import annotations

import pytest

from tests.support.cluster import Cluster

TIGHT = {
    "STANZAD_AUTH_TIMEOUT_S": "2",
    "STANZAD_MAX_INBOUND_BYTES_PER_S": "4096",
    "STANZAD_INBOUND_BURST_BYTES": "4096",
    "STANZAD_MAX_STANZAS_PER_S": "20",
    "STANZAD_STANZA_BURST": "10",
    "STANZAD_MAX_CONNECTIONS_PER_IP": "3",
    "STANZAD_KEEPALIVE_INTERVAL_S": "1",
    "STANZAD_KEEPALIVE_TIMEOUT_S": "1",
    # login throttling, small and fast (the defaults are in docs/operations.md)
    "STANZAD_AUTH_PAIR_FREE_FAILURES": "3",
    "STANZAD_AUTH_ACCOUNT_FREE_FAILURES": "4",
    "STANZAD_AUTH_DELAY_BASE_S": "1",
    "STANZAD_AUTH_PAIR_MAX_DELAY_S": "2",
    "STANZAD_AUTH_ACCOUNT_MAX_DELAY_S": "2",
    "STANZAD_AUTH_FAILURE_ANSWER_DELAY_S": "0.05",
    "STANZAD_AUTH_FAILURE_ANSWER_MAX_DELAY_S": "0.5",
    "STANZAD_AUTH_BLOCK_FAILURES_PER_MIN": "40",
    "STANZAD_MAX_SESSIONS_PER_ACCOUNT": "2",
    "STANZAD_MAX_STANZA_BYTES": "4096",
}
OPEN = {
    "STANZAD_MAX_INBOUND_BYTES_PER_S": "0",
    "STANZAD_MAX_STANZAS_PER_S": "0",
    "STANZAD_MAX_WRITE_BUFFER_BYTES": str(64 * 1024),
}


@pytest.fixture(scope="session")
def tight_cm(cluster: Cluster) -> int:
    """c2s port of the connection manager 'cm-tight' (limits in TIGHT)."""
    return cluster.start_cm("cm-tight", **TIGHT)


@pytest.fixture(scope="session")
def open_cm(cluster: Cluster) -> int:
    """c2s port of the connection manager 'cm-open' (limits in OPEN)."""
    return cluster.start_cm("cm-open", **OPEN)


PROXY_NETWORK = "127.0.99.0/24"  # the load balancers' addresses in the PROXY tests
PROXIED = {
    "STANZAD_PROXY_PROTOCOL_NETWORKS": PROXY_NETWORK,
    "STANZAD_MAX_CONNECTIONS_PER_IP": "2",
}


@pytest.fixture(scope="session")
def proxy_cm(cluster: Cluster) -> int:
    """c2s port of 'cm-proxy': connections from 127.0.99.0/24 start with a PROXY header."""
    return cluster.start_cm("cm-proxy", **PROXIED)
