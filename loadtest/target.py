"""The stanzad cluster under test, started by the tool on free loopback ports.

Built on tests/support/cluster.py.  Every service runs with the settings users get, every
defence at its default; only the log level is WARNING, so that logging is not what is
measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from devtools import localservers
from loadtest.bounds import MAX_CMS, check_range
from loadtest.opcount import OpCounters
from tests.support import postgres
from tests.support.cluster import Cluster, new_cluster

postgres.durable()  # the load tools measure PostgreSQL as deployed: fsync on

QUIET = {"STANZAD_LOG_LEVEL": "WARNING"}


@dataclass(frozen=True, slots=True)
class Topology:
    """``routers=0``: no router processes, every connection manager embeds one
    (STANZAD_EMBEDDED_ROUTER)."""

    cms: int = 1
    routers: int = 1
    partitions: int = 64
    archive: bool = True  # XEP-0313 archiving (STANZAD_MAM_ENABLED) on every service
    durable: bool = True  # durable delivery on JetStream (STANZAD_DURABLE), the default

    def __post_init__(self) -> None:
        check_range("--cms", self.cms, 1, MAX_CMS)
        check_range("--routers", self.routers, 0, 4)


def start(topology: Topology) -> Cluster:
    """nats, redis, routers, presence, roster, the connection managers, the admin API."""
    cluster = new_cluster()
    cluster.partitions = topology.partitions
    cluster.nats_http_port = localservers.free_port()  # /varz: NATS messages per phase
    env = {**QUIET, "STANZAD_MAM_ENABLED": "true" if topology.archive else "false",
           "STANZAD_DURABLE": "true" if topology.durable else "false"}
    try:
        cluster.start_servers()
        for i in range(topology.routers):
            cluster.start_router(f"router-{i + 1}", **env)
        cluster.start_presence(**env)
        cluster.start_roster(**env)
        embedded = {"STANZAD_EMBEDDED_ROUTER": "true", "STANZAD_LEASE_TTL_S": "3"}
        for i in range(topology.cms):
            # every defence at the default users get: a benchmark measures what is deployed
            cluster.start_cm(f"cm-{i + 1}", **env,
                             **(embedded if topology.routers == 0 else {}))
        cluster.start_admin(**QUIET)
        if topology.routers > 1 or (topology.routers == 0 and topology.cms > 1):
            time.sleep(4)  # partition leases (TTL 3 s) settle between the routers
    except BaseException:
        cluster.stop()
        raise
    return cluster


def admin(cluster: Cluster) -> tuple[str, str]:
    """(URL, token) of the cluster's admin API, started (logging at WARNING) if it is not
    running yet: the tool creates its users through it."""
    return cluster.admin(**QUIET)


def server_pids(cluster: Cluster) -> dict[str, int]:
    """Every server process still running (a shared test cluster may have lost some), and
    PostgreSQL's postmaster (its backends' CPU is counted with it: `procstat.TREES`); not
    the admin API, which only sets the run up."""
    pids = {name: proc.pid for name, proc in cluster.procs.items()
            if proc.poll() is None and name not in cluster.admin_ports}
    pg = postgres.pid()
    if pg is not None:
        pids["postgres"] = pg
    return pids


def ops(cluster: Cluster) -> OpCounters | None:
    """Where to read the cluster's Redis and NATS operations (loadtest/opcount.py); None for
    a Redis Cluster (INFO would have to be summed over its nodes).  PostgreSQL is left out:
    its counters lag by seconds, so a phase's reading would miss its last writes."""
    if cluster.redis_cluster is not None:
        return None
    return OpCounters(cluster.redis_url, cluster.nats_http_port)


def cm_names(cluster: Cluster) -> list[str]:
    return [name for name in server_pids(cluster) if name.startswith("cm-")]


def c2s_ports(cluster: Cluster) -> tuple[int, ...]:
    """The client ports that accept connections now."""
    ports = tuple(p for p in cluster.c2s_ports if localservers.port_open("127.0.0.1", p))
    if not ports:
        raise RuntimeError("no connection manager of the cluster accepts connections")
    return ports
