"""`stanzad run` with STANZAD_REDIS_URL, STANZAD_NATS_URL or STANZAD_DATABASE_URL set uses
that server instead of starting its own (services/cli/devcluster.py ``External``): the child
list, the services' environment, the ports it checks; and a whole local cluster on a Redis
Cluster (``redis+cluster://``)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from devtools import localservers
from services.cli import devcluster
from services.cli.devcluster import External, Ports
from shared.store import keys
from shared.store.redis import connect
from tests.services.cli.test_run_stop import CHILDREN, Run, _free_ports
from tests.support.redis_cluster import RedisClusterServers


def _children(tmp_path: Path, external: External) -> list[devcluster.Child]:
    postgres = localservers.LocalPostgres(tmp_path / "pg", 1)
    return devcluster._children(
        tmp_path, Ports(), "token", postgres, devcluster.nats_auth(tmp_path),
        devcluster.redis_auth(tmp_path), external=external)


def test_without_urls_it_starts_its_own_servers(tmp_path: Path) -> None:
    children = _children(tmp_path, External.from_env({}))
    assert [c.name for c in children[:3]] == ["nats", "redis", "postgres"]
    router = next(c for c in children if c.name == "router")
    assert router.env["STANZAD_REDIS_URL"].startswith("redis://router:")
    assert router.env["STANZAD_NATS_USER"] == "router"


def test_each_url_given_replaces_its_server(tmp_path: Path) -> None:
    external = External.from_env({
        "STANZAD_REDIS_URL": "redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7000",
        "STANZAD_NATS_URL": "nats://n:q@10.0.0.3:4222",
        "STANZAD_DATABASE_URL": "postgresql://app@10.0.0.4/chat",
        "STANZAD_DATABASE_OWNER_URL": "postgresql://owner@10.0.0.4/chat",
    })
    children = _children(tmp_path, external)
    names = [c.name for c in children]
    assert not {"nats", "redis", "postgres"} & set(names)
    for c in children:
        assert c.env["STANZAD_REDIS_URL"] == external.redis
        assert c.env["STANZAD_NATS_URL"] == external.nats
        assert "STANZAD_NATS_USER" not in c.env  # the URL's (or the environment's) identity
        assert c.env["STANZAD_DATABASE_URL"] == "postgresql://app@10.0.0.4/chat"
        assert c.env["STANZAD_DATABASE_OWNER_URL"] == "postgresql://owner@10.0.0.4/chat"
    listeners = {what for _, what in Ports().listeners(external=external)}
    assert not {"NATS", "Redis", "PostgreSQL"} & listeners  # their ports need not be free
    assert any("redis+cluster://u:***@10.0.0.1:7000" in line for line in external.describe())


def test_only_redis_given_keeps_the_local_nats_and_postgres(tmp_path: Path) -> None:
    children = _children(tmp_path, External(redis="redis://x:y@10.0.0.1:6379/0"))
    assert [c.name for c in children[:2]] == ["nats", "postgres"]
    cm = next(c for c in children if c.name == "cm")
    assert cm.env["STANZAD_NATS_USER"] == "connection_manager"
    assert cm.env["STANZAD_REDIS_URL"] == "redis://x:y@10.0.0.1:6379/0"


@pytest.mark.redis_cluster
def test_stanzad_run_on_a_redis_cluster(
    redis_cluster: RedisClusterServers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The local cluster with STANZAD_REDIS_URL=redis+cluster://...: no redis-server child;
    "up" means every partition of every role is leased, on the Redis Cluster."""
    # the `admin` user: every key (`stanzad run` waits for the leases with the URL given)
    monkeypatch.setenv("STANZAD_REDIS_URL", redis_cluster.url("admin"))
    ports = _free_ports()
    run = Run(tmp_path / "var", {k: v for k, v in ports.items() if k != "redis"})
    try:
        run.wait_up(CHILDREN - 1)
        assert "using the Redis at redis+cluster://admin:***@" in run.output

        async def members() -> list[bytes]:
            r = connect(redis_cluster.url())
            try:
                return list(await r.zrange(keys.members("route"), 0, -1))
            finally:
                await r.aclose()

        assert asyncio.run(members()) == [b"router-local"]
        run.signal_and_wait(signal.SIGTERM)
        assert run.proc.returncode == 0, run.output
    finally:
        run.cleanup()
