"""Services started before Redis is up wait for it instead of crashing (DESIGN: every service
reconnects to NATS and Redis by itself)."""

from __future__ import annotations

import time

from tests.support import cluster as cluster_mod
from tests.support.cluster import new_cluster


def test_services_started_before_redis_become_ready_when_it_arrives() -> None:
    c = new_cluster()
    try:
        c.nats_port = cluster_mod.localservers.free_port()
        c.redis_port = cluster_mod.localservers.free_port()
        c.database_url = cluster_mod.postgres.new_database()  # the store of record is up
        c.start_nats()  # Redis is not started yet
        c.start_service("router-1", "services.router", STANZAD_ROUTER_ID="router-1",
                        STANZAD_LEASE_TTL_S="3")
        c.start_service("presence-1", "services.presence", STANZAD_PRESENCE_ID="presence-1",
                        STANZAD_LEASE_TTL_S="3")
        time.sleep(2)
        for name in ("router-1", "presence-1"):
            assert c.procs[name].poll() is None, c.log(name)  # still running
            assert not c.ready(name)  # but not ready without Redis
        c.start_redis()
        c.wait_ready("router-1", timeout_s=20)
        c.wait_ready("presence-1", timeout_s=20)
    finally:
        c.stop()
