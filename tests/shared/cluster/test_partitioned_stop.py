"""The stop path of a partitioned service (shared/cluster/partitioned.py, partitions.py): the
last live member of a role frees its partitions at once, leaving no hand-over mark; with
another member the FENCE hand-over still happens.  Real NATS and Redis on free ports."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest

from shared.cluster.partitioned import PartitionedService
from shared.runtime.settings import PartitionedSettings
from shared.store import keys
from shared.store.redis import connect as redis_connect
from tests.support.cluster import Cluster, new_cluster

PARTITIONS = 4
HANG_GUARD_S = 30


class Probe(PartitionedService):
    name = "probe"

    async def handle_batch(self, batch: list[tuple[str, bytes]]) -> None:
        return None


@pytest.fixture(scope="module")
def servers() -> Iterator[Cluster]:
    c = new_cluster()
    try:
        c.start_servers()
        yield c
    finally:
        c.stop()


def _probes(servers: Cluster, lease_ttl_s: float, *members: str, durable: bool = False
            ) -> list[Probe]:
    """Members of a role of their own (no member of another test counts); the FENCE
    hand-over is that of core NATS (``durable`` false)."""
    role = f"probe-{secrets.token_hex(3)}"
    cls = type("RoleProbe", (Probe,), {"role": role})
    # as the router's NATS identity, on subjects of the router's family of their own
    settings = PartitionedSettings(nats_url=servers.nats_url_of("router"),
                                   nats_tls_ca=str(servers.service_tls.ca),
                                   redis_url=servers.redis_url, partitions=PARTITIONS,
                                   lease_ttl_s=lease_ttl_s, durable=durable)
    return [cls(settings, m, lambda p: [_subject(role, p)]) for m in members]


def _subject(role: str, p: int) -> str:
    """A probe role's subject of partition ``p``: one token under the router's family."""
    return f"stanzad.route.{role}-{p}"


async def _leases(servers: Cluster, role: str) -> tuple[list[str | None], list[int]]:
    """The lease holder of every partition, and the partitions with a hand-over mark."""
    redis = redis_connect(servers.redis_url)
    try:
        owners = [await redis.get(keys.partition_lease(role, p)) for p in range(PARTITIONS)]
        marks = [p for p in range(PARTITIONS) if await redis.exists(keys.handover(role, p))]
    finally:
        await redis.aclose()
    return [o.decode() if o else None for o in owners], marks


async def test_the_last_member_stops_without_waiting_for_a_new_owner(servers: Cluster) -> None:
    # a 60 s lease: a wait for a new owner would last 60/3 + 2 = 22 s, past this hang guard
    (lone,) = _probes(servers, 60, "lone")
    await lone.start()
    assert lone.partitions.held == set(range(PARTITIONS))
    await asyncio.wait_for(lone.stop(), 15)
    owners, marks = await _leases(servers, lone.role)
    assert owners == [None] * PARTITIONS  # freed
    assert marks == []  # a member starting later must not wait for a FENCE of ours
    assert not lone._handed  # no FENCE published


async def test_with_another_member_the_partitions_are_handed_over(servers: Cluster) -> None:
    a, b = _probes(servers, 3, "a", "b")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_GUARD_S
    try:
        await a.start()
        await b.start()
        while not (a.partitions.held and b.partitions.held and not a.partitions.handing_over):
            assert loop.time() < deadline, (a.partitions.held, b.partitions.held)
            await asyncio.sleep(0.05)
        a_had = set(a.partitions.held)
        await asyncio.wait_for(a.stop(), HANG_GUARD_S)
        # every partition a held went through the FENCE: a saw its own come back
        assert {_subject(a.role, p) for p in a_had} <= a._handed
        while (await _leases(servers, a.role))[0] != ["b"] * PARTITIONS:
            assert loop.time() < deadline, await _leases(servers, a.role)
            await asyncio.sleep(0.05)
    finally:
        await b.stop()


async def test_durable_members_hand_over_without_fence_and_leave_no_mark(
    servers: Cluster,
) -> None:
    """With durable delivery the leaving member acks what it took, then frees each lease;
    the other takes every partition (recreating its consumer), and no FENCE is published."""
    a, b = _probes(servers, 3, "a", "b", durable=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_GUARD_S
    try:
        await a.start()
        await b.start()
        while not (a.partitions.held and b.partitions.held and not a.partitions.handing_over):
            assert loop.time() < deadline, (a.partitions.held, b.partitions.held)
            await asyncio.sleep(0.05)
        await asyncio.wait_for(a.stop(), HANG_GUARD_S)
        assert not a._handed and not a._fence_seen  # no FENCE
        while (leases := await _leases(servers, a.role))[0] != ["b"] * PARTITIONS:
            assert loop.time() < deadline, leases
            await asyncio.sleep(0.05)
        assert leases[1] == []  # no hand-over mark either
        assert len(b.bus._consumers) == PARTITIONS
    finally:
        await b.stop()


async def test_a_durable_member_holds_what_it_consumes_and_offers_none_of_it_locally(
    servers: Cluster,
) -> None:
    """`holds` is true for the subjects of the partitions consumed from JetStream (the
    router then writes a sender's archive row itself instead of sending a SENT envelope
    through the stream to itself), and none of them is handed over in-process
    (shared/bus/local.py is for core NATS subjects: a durable one stays on its stream)."""
    (lone,) = _probes(servers, 60, "durable-lone", durable=True)
    subjects = [_subject(lone.role, p) for p in range(PARTITIONS)]
    try:
        await asyncio.wait_for(lone.start(), HANG_GUARD_S)
        assert lone.partitions.held == set(range(PARTITIONS))
        assert all(lone.holds(s) for s in subjects)
        assert not lone.bus._offered & set(subjects)
    finally:
        await asyncio.wait_for(lone.stop(), HANG_GUARD_S)
    assert not any(lone.holds(s) for s in subjects)
