"""RFC 6120 §10.1 order kept with two router processes sharing the partitions."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from shared.bus import subjects
from shared.cluster.partitions import PartitionManager
from shared.store.accounts import AccountStore
from shared.store.pg.database import connect as db_connect
from shared.store.redis import connect as redis_connect
from shared.xmpp.credentials import derive_credentials
from tests.support.cluster import Cluster, new_cluster
from tests.support.xmpp import Client, RawClient

N_MESSAGES = 300
N_PAIRS = 4


@pytest.fixture(scope="module")
def two_routers() -> AsyncIterator[Cluster]:
    c = new_cluster()
    c.partitions = 16
    try:
        c.start_servers()
        c.start_router("router-a")
        c.start_router("router-b")
        c.start_presence()
        c.start_roster()
        c.start_cm("cm-a")
        c.start_cm("cm-b")
        yield c
    finally:
        c.stop()


async def _wait_split(cluster: Cluster, timeout: float = 20) -> dict[int, str]:
    redis = redis_connect(cluster.redis_url)

    async def noop(_: int) -> None:
        return None

    pm = PartitionManager(redis, "route", "probe", cluster.partitions, 1.0, noop, noop)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            owners = await pm.owners()
            counts: dict[str, int] = {}
            for owner in owners.values():
                counts[owner or ""] = counts.get(owner or "", 0) + 1
            if "" not in counts and len(counts) == 2:
                return {p: o for p, o in owners.items() if o}
            if loop.time() > deadline:
                raise TimeoutError(f"partitions not split between two routers: {counts}")
            await asyncio.sleep(0.2)
    finally:
        await redis.aclose()


async def test_rfc6120_10_1_order_kept_with_two_routers_and_two_cms(two_routers: Cluster) -> None:
    owners = await _wait_split(two_routers)
    assert set(owners.values()) == {"router-a", "router-b"}
    # receivers whose partitions are owned by each router, half and half
    names: dict[str, list[str]] = {"router-a": [], "router-b": []}
    i = 0
    while min(len(v) for v in names.values()) < N_PAIRS // 2:
        jid = f"r{i}@localhost"
        owner = owners[subjects.partition(jid, two_routers.partitions)]
        if len(names[owner]) < N_PAIRS // 2:
            names[owner].append(jid)
        i += 1
    receiver_jids = names["router-a"] + names["router-b"]
    db = await db_connect(two_routers.database_url, "tests", size=1)
    accounts = AccountStore(db, "tests")
    senders, receivers = [], []
    try:
        for i in range(N_PAIRS):
            for role, group in (("s", senders), ("r", receivers)):
                jid = f"s{i}@localhost" if role == "s" else receiver_jids[i]
                await accounts.create(jid, derive_credentials("pw", 4096))
                # senders on one connection manager, receivers on the other
                port = two_routers.c2s_ports[0 if role == "s" else 1]
                client = Client(jid + "/order", "pw")
                await client.login("127.0.0.1", port)
                group.append((client, jid))
        await asyncio.sleep(0.5)  # initial presence reaches the session table
        for (sender, _), (_, rjid) in zip(senders, receivers, strict=True):
            for n in range(N_MESSAGES):
                sender.send_message(mto=rjid + "/order", mbody=str(n), mtype="chat")

        async def collect(client: Client) -> list[int]:
            got = []
            while len(got) < N_MESSAGES:
                msg = await asyncio.wait_for(client.messages.get(), 30)
                assert msg["type"] != "error", msg
                got.append(int(msg["body"]))
            return got

        results = await asyncio.gather(*(collect(c) for c, _ in receivers))
        for got in results:
            assert got == list(range(N_MESSAGES))
        metrics_a = two_routers.metrics("router-a")
        metrics_b = two_routers.metrics("router-b")
        # both routers really routed part of the traffic
        assert 'stanzad_router_stanzas_total{kind="message",outcome="delivered"}' in metrics_a
        assert 'stanzad_router_stanzas_total{kind="message",outcome="delivered"}' in metrics_b
    finally:
        for client, _ in senders + receivers:
            await client.logout()
        await db.close()


async def test_the_senders_half_of_a_message_reaches_the_router_of_the_senders_partition(
    two_routers: Cluster,
) -> None:
    """XEP-0280 §5 and XEP-0313: alice's partition is router-a's, bob's router-b's, so the
    router that delivers to bob hands alice's row and sent carbons to router-a in a SENT
    envelope; bob's copy carries his stanza-id only, alice's carbon hers, the same id."""
    from tests.integration.test_archive import _archived_ids, _online, _read_message
    from tests.support.xmpp import eventually

    owners = await _wait_split(two_routers)
    pick: dict[str, str] = {}
    for i in range(1000):
        for owner, prefix in (("router-a", "carla"), ("router-b", "dave")):
            jid = f"{prefix}{i}@localhost"
            if prefix not in pick and owners[subjects.partition(jid, two_routers.partitions)] \
                    == owner:
                pick[prefix] = jid
    alice, bob = pick["carla"], pick["dave"]
    db = await db_connect(two_routers.database_url, "tests", size=1)
    clients = []
    try:
        for jid in (alice, bob):
            await AccountStore(db, "tests").create(jid, derive_credentials("pw", 4096))
        phone = await _online(two_routers, alice, "pw", "phone")
        laptop = await _online(two_routers, alice, "pw", "laptop", carbons=True)
        b = await _online(two_routers, bob, "pw", "desk")
        clients = [phone, laptop, b]
        await phone.send(f"<message to='{bob}' type='chat'><body>across routers</body>"
                         "</message>".encode())
        got = await _read_message(b, b"across routers")
        found = re.search(rb'<stanza-id xmlns="urn:xmpp:sid:0" by="([^"]+)" id="([0-9a-f]+)"/>',
                          got)
        assert found is not None and found.group(1) == bob.encode(), got
        assert f'by="{alice}"'.encode() not in got, got
        sid = found.group(2)
        carbon = await laptop.read_until(b"</sent>")
        assert b"across routers" in carbon
        assert b'by="' + alice.encode() + b'" id="' + sid + b'"' in carbon, carbon

        async def archived(c: RawClient) -> bool:
            return sid in await _archived_ids(c)

        await eventually(lambda: archived(phone), 15, "alice's row")
        await eventually(lambda: archived(b), 15, "bob's row")
    finally:
        for c in clients:
            await c.close()
        await db.close()
