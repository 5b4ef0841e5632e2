"""The session's cluster talks to its servers as deployed: NATS only over TLS (the services
connect, a plaintext client does not), each service's Redis user only on its own keys, and
PostgreSQL through a role that may read and write rows but not change the schema."""

from __future__ import annotations

from tests.shared.bus.test_tls import plaintext_exchange
from tests.support.cluster import Cluster


def test_the_clusters_nats_requires_tls_and_the_services_connect_over_it(
    cluster: Cluster,
) -> None:
    assert cluster.nats_auth is not None
    info, reply = plaintext_exchange(cluster.nats_port, "router",
                                     cluster.nats_auth.passwords["router"])
    assert info["tls_required"] is True
    assert b"PONG" not in reply and b"+OK" not in reply, reply
    # every service is up, so each connected over TLS with the CA of its environment
    for name in ("router-1", "presence-1", "roster-1", "cm-1"):
        assert cluster.ready(name), name
    env = cluster.env("router")
    assert env["STANZAD_NATS_TLS_CA"] == str(cluster.service_tls.ca)
