"""Durable delivery (docs/architecture.md, "Durable delivery on NATS JetStream"): a stanza the
server acknowledged (XEP-0198 'h') is delivered exactly once, in order, or bounced, when the
router owning its partition is SIGKILLed under load; and a stanza published before any
router holds its partition is delivered once one does."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest

from shared.bus import subjects
from shared.store.accounts import AccountStore
from shared.store.pg.database import connect as db_connect
from shared.xmpp.credentials import derive_credentials
from tests.faults.test_handover import _owners
from tests.support.cluster import Cluster, metric_value, new_cluster
from tests.support.xmpp import RawClient, raw_sm_login

ROUTER = {"STANZAD_LEASE_TTL_S": "2"}
UNLIMITED = {"STANZAD_MAX_STANZAS_PER_S": "0", "STANZAD_MAX_INBOUND_BYTES_PER_S": "0"}
N = 150  # messages per sender and receiver
SENDERS = 3
BODY = re.compile(rb"<body>s(\d+):(\d+)</body>")


@pytest.fixture
def durable_cluster() -> Iterator[Cluster]:
    c = new_cluster()
    c.partitions = 8
    try:
        c.start_servers()
        c.start_router("router-a", **ROUTER)
        c.start_router("router-b", **ROUTER)
        c.start_presence()
        c.start_roster()
        c.start_cm("cm-1", **UNLIMITED)
        yield c
    finally:
        c.stop()


async def _accounts(cluster: Cluster, jids: list[str]) -> None:
    db = await db_connect(cluster.database_url, "tests", size=1)
    accounts = AccountStore(db, "tests")
    creds = derive_credentials("pw", 4096)
    for jid in jids:
        await accounts.create(jid, creds)
    await db.close()


async def _acked(client: RawClient) -> int:
    """XEP-0198 §4: ask, and return the 'h' the server answers (stored stanzas only)."""
    await client.send(b"<r xmlns='urn:xmpp:sm:3'/>")
    data = await client.read_until(b"<a xmlns=", timeout=20)
    data += await client.read_until(b"/>", timeout=5) if not data.endswith(b"/>") else b""
    found = re.findall(rb'<a xmlns="urn:xmpp:sm:3" h="(\d+)"', data)
    assert found, data
    return int(found[-1])


async def _pending(client: RawClient) -> bytes:
    """What the server wrote and the client did not read yet (a second's worth)."""
    assert client.reader is not None
    data = b""
    while True:
        try:
            chunk = await asyncio.wait_for(client.reader.read(65536), 1.0)
        except TimeoutError:
            return data
        if not chunk:
            return data
        data += chunk


async def test_router_sigkill_under_load_loses_and_duplicates_nothing_acknowledged(
    durable_cluster: Cluster,
) -> None:
    cluster = durable_cluster
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:  # both routers hold partitions
        owners = await _owners(cluster)
        if None not in owners.values() and len(set(owners.values())) == 2:
            break
        assert loop.time() < deadline, owners
        await asyncio.sleep(0.2)
    picked: dict[str, list[str]] = {"router-a": [], "router-b": []}
    i = 0
    while len(picked["router-b"]) < 2 or len(picked["router-a"]) < 1:
        jid = f"rcv{i}@localhost"
        owner = owners[subjects.partition(jid, cluster.partitions)]
        if (owner == "router-b" and len(picked[owner]) < 2) or (owner == "router-a" and \
                not picked[owner]):
            picked[owner].append(jid)
        i += 1
    receivers = picked["router-b"] + picked["router-a"]
    senders = [f"snd{k}@localhost" for k in range(SENDERS)]
    await _accounts(cluster, receivers + senders)
    rx = {jid: RawClient("127.0.0.1", cluster.c2s_port) for jid in receivers}
    tx = [RawClient("127.0.0.1", cluster.c2s_port) for _ in senders]
    for jid, client in rx.items():
        await raw_sm_login(client, jid, "pw", "r")
    for jid, client in zip(senders, tx, strict=True):
        await raw_sm_login(client, jid, "pw", "s")

    async def collect(client: RawClient) -> list[tuple[int, int]]:
        got: list[tuple[int, int]] = []
        data = b""
        while len(got) < N * SENDERS:
            chunk = await asyncio.wait_for(client.reader.read(65536), 30)  # type: ignore[union-attr]
            assert chunk, "connection closed"
            data += chunk
            while b"</message>" in data:
                stanza, _, data = data.partition(b"</message>")
                if (m := BODY.search(stanza)) is not None:
                    got.append((int(m.group(1)), int(m.group(2))))
            if b'<r xmlns="urn:xmpp:sm:3"/>' in data:  # the server asks: XEP-0198 §4
                await client.send(b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % len(got))
                data = data.replace(b'<r xmlns="urn:xmpp:sm:3"/>', b"")
        return got

    collectors = {jid: asyncio.create_task(collect(c)) for jid, c in rx.items()}
    for n in range(N):
        for k, client in enumerate(tx):
            await client.send(b"".join(
                f"<message to='{jid}/r' type='chat'><body>s{k}:{n}</body></message>".encode()
                for jid in receivers
            ))
        if n == N // 3:
            await asyncio.to_thread(cluster.kill, "router-b")  # SIGKILL
        await asyncio.sleep(0.02)
    acked = [await _acked(client) for client in tx]
    bounced = 0
    for client in tx:
        bounced += (await _pending(client)).count(b'type="error"')
    done, pending = await asyncio.wait(collectors.values(), timeout=60)
    for task in pending:
        task.cancel()
    lost = duplicated = disordered = 0
    for jid, task in collectors.items():
        got = task.result() if task in done else []
        for k in range(SENDERS):
            seq = [n for s, n in got if s == k]
            duplicated += len(seq) - len(set(seq))
            lost += N - len(set(seq))
            disordered += seq != sorted(seq)
        assert task in done, f"{jid} got {len(got)} of {N * SENDERS}"
    dropped = metric_value(cluster.metrics("cm-1"), "stanzad_cm_duplicates_dropped_total")
    replayed = metric_value(cluster.metrics("router-a"), "stanzad_bus_takeover_backlog_total",
                            service="router")
    print(f"router SIGKILL: {N * SENDERS * len(receivers)} messages, acked "
          f"{sum(acked)}, lost {lost}, duplicated {duplicated}, bounced {bounced}, "
          f"out of order {disordered}; waiting at router-a's take-over {replayed:.0f}, copies "
          f"dropped by the connection manager {dropped:.0f}")
    assert acked == [N * len(receivers)] * SENDERS  # every one stored and acknowledged
    assert (lost, duplicated, disordered, bounced) == (0, 0, 0, 0)
    for client in [*rx.values(), *tx]:
        await client.close()


async def test_a_stanza_published_before_any_router_is_delivered_once_one_starts() -> None:
    """The partitions' streams exist before their consumers: what a connection manager
    published while no router ran waits in the stream (and counts in 'h')."""
    c = new_cluster()
    c.partitions = 4
    try:
        c.start_servers()
        c.start_presence()
        c.start_roster()
        c.start_cm("cm-1")
        await _accounts(c, ["early@localhost", "late@localhost"])
        receiver, sender = RawClient("127.0.0.1", c.c2s_port), RawClient("127.0.0.1", c.c2s_port)
        await raw_sm_login(receiver, "late@localhost", "pw", "r")
        await raw_sm_login(sender, "early@localhost", "pw", "s")
        await sender.send(b"<message to='late@localhost/r' type='chat'><body>first</body>"
                          b"</message>")
        assert await _acked(sender) == 1  # stored, though nobody consumes yet
        await asyncio.to_thread(c.start_router, "router-late", **ROUTER)
        got = await receiver.read_until(b"</message>", timeout=20)
        assert b"<body>first</body>" in got
        for client in (receiver, sender):
            await client.close()
    finally:
        c.stop()
