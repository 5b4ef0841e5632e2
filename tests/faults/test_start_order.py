"""Start order: services started before Redis is up wait for it instead of crashing (every
service reconnects to NATS and Redis by itself); "stanzad is up" only once every role holds
its partitions; a stanza published before its partition's consumer exists is kept and
delivered once one does (the route case: tests/faults/test_durable.py; here the s2s one)."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from services.cli import devcluster
from shared.store import keys
from shared.store.redis import connect as redis_connect
from tests.faults.test_durable_kills import OURS, THEIRS, _accounts, federation
from tests.support import cluster as cluster_mod
from tests.support import durable
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


async def test_up_is_printed_only_once_every_role_holds_every_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`stanzad run` prints "stanzad is up" after `_wait_partitions`: it returns only when
    every partition of every partitioned role has a lease holder (issue 20, "Start-up and
    scale-up lose nothing")."""
    monkeypatch.setenv("STANZAD_PARTITIONS", "4")
    c = new_cluster()
    redis = None
    try:
        c.redis_port = cluster_mod.localservers.free_port()
        c.start_redis()
        redis = redis_connect(c.redis_url)
        last = (devcluster.PARTITIONED_ROLES[-1], 3)
        for role in devcluster.PARTITIONED_ROLES:
            for p in range(4):
                if (role, p) != last:
                    await redis.set(keys.partition_lease(role, p), f"{role}-1", px=60_000)
        waiting = asyncio.create_task(devcluster._wait_partitions(c.redis_url, timeout_s=60))
        await asyncio.sleep(1.5)  # several of its polls: one partition has no holder yet
        assert not waiting.done()
        await redis.set(keys.partition_lease(*last), f"{last[0]}-1", px=60_000)
        await asyncio.wait_for(waiting, 30)
    finally:
        if redis is not None:
            await redis.aclose()
        c.stop()


async def test_a_message_to_a_remote_domain_before_any_s2s_gateway_is_delivered_once_one_runs(
) -> None:
    """Tried as a new user would: a message to a remote domain sent before the s2s gateway
    holds its partition (right after "up", or with no gateway yet) waits in the STANZAD_S2S
    stream, counted in 'h', and reaches the remote server (a Prosody) once a gateway takes
    the partition."""
    async with federation(gateway=False) as fed:
        cluster, prosody = fed.cluster, fed.prosody
        tag = secrets.token_hex(3)
        sender = durable.Sender(f"early-{tag}@{OURS}", cluster.c2s_port)
        receiver = durable.Receiver(f"far-{tag}@{THEIRS}", prosody.c2s_port, THEIRS, sm=False)
        await _accounts(cluster, [sender.jid])
        await asyncio.to_thread(prosody.register, receiver.jid.partition("@")[0],
                                durable.PASSWORD)
        await receiver.login()
        await sender.login()
        assert sender.client is not None and receiver.client is not None
        await sender.client.send(f"<message to='{receiver.jid}/r' type='chat'><body>s0:0"
                                 "</body></message>".encode())
        reading = asyncio.create_task(sender.drain(asyncio.Event()))
        assert await sender.acked(reading) == 1  # stored, though no gateway consumes yet
        env = dict(fed.s2s_env)
        port = int(env.pop("port"))
        await asyncio.to_thread(cluster.start_s2s, "s2s-1", port, **env)
        got = await receiver.client.read_until(b"</message>", timeout=30)
        assert durable.BODY.search(got) is not None, got
        assert not sender.bounced
        for client in (sender.client, receiver.client):
            await client.close()
