"""Connection managers that embed a router (STANZAD_EMBEDDED_ROUTER): stanzas between users
of one process skip NATS (shared/bus/local.py), and RFC 6120 §10.1 order holds while the
route partitions move between two such processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import pytest

from shared.store.accounts import AccountStore
from shared.store.pg.database import connect as db_connect
from shared.xmpp.credentials import derive_credentials
from tests.support.cluster import Cluster, metric_value, new_cluster
from tests.support.xmpp import Client, eventually

EMBED = {"STANZAD_EMBEDDED_ROUTER": "true", "STANZAD_LEASE_TTL_S": "3"}


def _nodes(*cms: str, **env: str) -> Iterator[Cluster]:
    """presence and roster processes, and connection managers that embed the routers."""
    c = new_cluster()
    c.partitions = 8
    try:
        c.start_servers()
        c.start_presence(**env)
        c.start_roster(**env)
        for name in cms:
            c.start_cm(name, **EMBED, **env)
        yield c
    finally:
        c.stop()


@pytest.fixture
def one_node() -> Iterator[Cluster]:
    # the in-process hand-off of a route partition skips the store: only without durable
    # delivery (with it, cm -> router goes through the route stream, router -> cm in-process)
    yield from _nodes("cm-1", STANZAD_DURABLE="false")


@pytest.fixture
def two_nodes() -> Iterator[Cluster]:
    yield from _nodes("cm-a", "cm-b")


async def _login(cluster: Cluster, jid: str, port: int) -> Client:
    db = await db_connect(cluster.database_url, "tests", size=1)
    try:
        await AccountStore(db, "tests").create(jid, derive_credentials("pw", 4096))
    finally:
        await db.close()
    client = Client(f"{jid}/order", "pw")
    await client.login("127.0.0.1", port)
    return client


async def _collect(client: Client, n: int, timeout: float = 30) -> list[int]:
    got = []
    while len(got) < n:
        msg = await asyncio.wait_for(client.messages.get(), timeout)
        assert msg["type"] != "error", msg
        got.append(int(msg["body"]))
    return got


async def test_rfc6120_10_1_chat_in_one_process_skips_nats_and_keeps_order(
    one_node: Cluster,
) -> None:
    port = one_node.c2s_ports[0]
    alice = await _login(one_node, "alice@localhost", port)
    bob = await _login(one_node, "bob@localhost", port)
    try:
        await asyncio.sleep(0.5)  # initial presence reaches the session table
        for n in range(300):
            alice.send_message(mto="bob@localhost/order", mbody=str(n), mtype="chat")
        assert await _collect(bob, 300) == list(range(300))
        # and a stanza for a missing account still bounces (RFC 6121 §8.5.1)
        alice.send_message(mto="nobody@localhost", mbody="x", mtype="chat")
        err = await asyncio.wait_for(alice.messages.get(), 10)
        assert err["type"] == "error" and err["error"]["condition"] == "service-unavailable"
        metrics = one_node.metrics("cm-1")
        # both hops were in-process: cm -> router and router -> cm
        assert metric_value(metrics, "stanzad_bus_local_messages_total",
                            service="connection_manager") >= 300
        assert metric_value(metrics, "stanzad_bus_local_messages_total", service="router") >= 300
        delivered = metric_value(metrics, "stanzad_router_stanzas_total", kind="message",
                                 outcome="delivered")
        assert delivered >= 300
    finally:
        await alice.logout()
        await bob.logout()


async def test_rfc6120_10_1_order_kept_while_partitions_move_between_embedded_routers(
    two_nodes: Cluster,
) -> None:
    """Senders on cm-a, receivers on cm-b; while they chat, cm-a leaves (SIGTERM hands its
    route partitions to cm-b's router after a fence) — every receiver gets 0..N-1 in order."""
    a_port, b_port = two_nodes.c2s_ports
    pairs = []
    for i in range(4):
        sender = await _login(two_nodes, f"s{i}@localhost", a_port)
        receiver = await _login(two_nodes, f"r{i}@localhost", b_port)
        pairs.append((sender, receiver, f"r{i}@localhost"))
    await asyncio.sleep(0.5)
    n_before, n_after = 150, 150
    try:
        # a third sender on cm-b keeps sending while cm-a goes away
        local = [await _login(two_nodes, f"l{i}@localhost", b_port) for i in range(4)]
        for sender, _, rjid in pairs:
            for n in range(n_before):
                sender.send_message(mto=rjid + "/order", mbody=str(n), mtype="chat")
        for client, (_, _, rjid) in zip(local, pairs, strict=True):
            for n in range(n_before):
                client.send_message(mto=rjid + "/order", mbody=str(10_000 + n), mtype="chat")
        got: dict[int, list[int]] = {i: [] for i in range(4)}
        for i, (_, receiver, _) in enumerate(pairs):
            while len(got[i]) < 2 * n_before:
                msg = await asyncio.wait_for(receiver.messages.get(), 30)
                assert msg["type"] != "error", msg
                got[i].append(int(msg["body"]))
        two_nodes.procs["cm-a"].send_signal(signal.SIGTERM)  # partitions move to cm-b
        for client, (_, _, rjid) in zip(local, pairs, strict=True):
            for n in range(n_before, n_before + n_after):
                client.send_message(mto=rjid + "/order", mbody=str(10_000 + n), mtype="chat")
                if n % 10 == 0:
                    await asyncio.sleep(0.02)  # spread over the hand-over
        for i, (_, receiver, _) in enumerate(pairs):
            while len(got[i]) < 2 * n_before + n_after:
                msg = await asyncio.wait_for(receiver.messages.get(), 30)
                assert msg["type"] != "error", msg
                got[i].append(int(msg["body"]))
        for i in range(4):
            from_a = [n for n in got[i] if n < 10_000]
            from_b = [n - 10_000 for n in got[i] if n >= 10_000]
            assert from_a == list(range(n_before))
            assert from_b == list(range(n_before + n_after))
        async def all_on_b() -> bool:
            held = metric_value(two_nodes.metrics("cm-b"), "stanzad_router_partitions")
            return held == two_nodes.partitions

        await eventually(all_on_b, 15, "cm-b's router holds every partition")
        for client in local:
            await client.logout()
    finally:
        for sender, receiver, _ in pairs:
            for c in (sender, receiver):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.logout(), 5)
