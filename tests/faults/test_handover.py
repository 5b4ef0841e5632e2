"""Graceful partition hand-over loses and duplicates nothing (shared/cluster/partitions.py):
a router stopped with SIGTERM, and a router joining (rebalancing), while messages flow."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import pytest

from shared.bus import subjects
from shared.cluster.partitions import PartitionManager
from shared.store.accounts import AccountStore
from shared.store.pg.database import connect as db_connect
from shared.store.redis import connect as redis_connect
from shared.xmpp.credentials import derive_credentials
from tests.support.cluster import Cluster, new_cluster
from tests.support.xmpp import RawClient, raw_login

ROUTER = {"STANZAD_LEASE_TTL_S": "2"}
N = 120  # messages per receiver


@pytest.fixture
def handover_cluster() -> Iterator[Cluster]:
    c = new_cluster()
    c.partitions = 8
    try:
        c.start_servers()
        c.start_router("router-a", **ROUTER)
        c.start_router("router-b", **ROUTER)
        c.start_presence()
        c.start_roster()
        c.start_cm("cm-1", STANZAD_MAX_STANZAS_PER_S="0", STANZAD_MAX_INBOUND_BYTES_PER_S="0")
        yield c
    finally:
        c.stop()


async def _owners(cluster: Cluster) -> dict[int, str | None]:
    redis = redis_connect(cluster.redis_url)

    async def noop(*_: object) -> None:
        return None

    try:
        pm = PartitionManager(redis, "route", "probe", cluster.partitions, 1.0, noop, noop)
        return await pm.owners()
    finally:
        await redis.aclose()


async def _run(cluster: Cluster, disturb: object) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:  # both routers hold partitions
        owners = await _owners(cluster)
        if None not in owners.values() and len(set(owners.values())) == 2:
            break
        assert loop.time() < deadline, owners
        await asyncio.sleep(0.2)
    # receivers on router-b's partitions (the ones that move) and on router-a's
    picked: dict[str, list[str]] = {"router-a": [], "router-b": []}
    i = 0
    while min(len(v) for v in picked.values()) < 2:
        jid = f"rcv{i}@localhost"
        owner = owners[subjects.partition(jid, cluster.partitions)]
        if owner in picked and len(picked[owner]) < 2:
            picked[owner].append(jid)
        i += 1
    receivers = picked["router-a"] + picked["router-b"]
    db = await db_connect(cluster.database_url, "tests", size=1)
    accounts = AccountStore(db, "tests")
    creds = derive_credentials("pw", 4096)
    for jid in [*receivers, "snd@localhost"]:
        await accounts.create(jid, creds)
    await db.close()
    clients = {jid: RawClient("127.0.0.1", cluster.c2s_port) for jid in receivers}
    for jid, client in clients.items():
        await raw_login(client, jid, "pw", "r")
    sender = RawClient("127.0.0.1", cluster.c2s_port)
    await raw_login(sender, "snd@localhost", "pw", "s")

    async def collect(client: RawClient) -> list[int]:
        got: list[int] = []
        data = b""
        while len(got) < N:
            chunk = await asyncio.wait_for(client.reader.read(65536), 20)  # type: ignore[union-attr]
            assert chunk, "connection closed"
            data += chunk
            while b"</body>" in data:
                head, _, data = data.partition(b"</body>")
                got.append(int(head.rpartition(b"<body>")[2]))
        return got

    collectors = [asyncio.create_task(collect(c)) for c in clients.values()]
    for n in range(N):
        await sender.send(b"".join(
            f"<message to='{jid}/r' type='chat'><body>{n}</body></message>".encode()
            for jid in receivers
        ))
        if n == N // 4:
            await asyncio.to_thread(disturb)  # type: ignore[operator]
        await asyncio.sleep(0.03)
    results = await asyncio.gather(*collectors)
    for got in results:
        assert got == list(range(N))  # nothing lost, nothing twice, in order
    for client in [*clients.values(), sender]:
        await client.close()


async def test_sigterm_on_a_router_hands_its_partitions_over_without_loss(
    handover_cluster: Cluster,
) -> None:
    def stop_b() -> None:
        handover_cluster.procs["router-b"].send_signal(signal.SIGTERM)

    await _run(handover_cluster, stop_b)
    assert handover_cluster.procs["router-b"].wait(10) == 0
    owners = await _owners(handover_cluster)
    assert set(owners.values()) == {"router-a"}


async def test_a_joining_router_takes_partitions_without_loss(
    handover_cluster: Cluster,
) -> None:
    def start_c() -> None:
        handover_cluster.start_router("router-c", **ROUTER)

    await _run(handover_cluster, start_c)
    owners = await _owners(handover_cluster)
    assert "router-c" in set(owners.values())
