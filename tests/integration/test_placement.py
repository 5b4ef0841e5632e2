"""Load-aware placement of new streams (shared/cluster/placement.py) with real connection
managers, Redis and NATS: a full one redirects new streams to another one's direct port
(RFC 6120 §4.9.3.19), or, with no direct addressing, stays serving and fails /readyz; stale
and full peers are never targets.

A cluster of its own for the module (no router or presence needed: a login and a bind only
touch PostgreSQL and Redis), with heartbeats every second (STANZAD_SESSION_TTL_S=2) and a
tiny capacity: STANZAD_MAX_CONNECTIONS=4 at a high-water mark of 0.5, so two connections
make a connection manager full, and it is not full again below one."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from devtools import localservers
from shared.cluster.placement import Load
from shared.store import keys
from tests.conftest import Users
from tests.support.cluster import Cluster, metric_value, new_cluster
from tests.support.xmpp import RawClient, ask_iq, raw_login

HOST = "127.0.0.1"
TINY = {"STANZAD_SESSION_TTL_S": "2", "STANZAD_MAX_CONNECTIONS": "4",
        "STANZAD_PLACEMENT_HIGH_WATER": "0.5", "STANZAD_PLACEMENT_LOW_WATER": "0.25"}
SEE_OTHER_HOST = b'<see-other-host xmlns="urn:ietf:params:xml:ns:xmpp-streams">'


@pytest.fixture(scope="module")
def placed() -> Iterator[Cluster]:
    c = new_cluster()
    try:
        c.start_servers()
        yield c
    finally:
        c.stop()


@pytest.fixture
async def accounts(placed: Cluster) -> AsyncIterator[Users]:
    u = Users(placed)
    yield u
    await u.close()


def _direct(bare: bool = False) -> tuple[dict[str, str], str]:
    """Direct addressing on a free port, and the address clients reach it at (given as
    host:port, or as a bare host that the connection manager completes with the port)."""
    port = localservers.free_port()
    address = f"{HOST}:{port}"
    return ({"STANZAD_C2S_DIRECT_PORT": str(port),
             "STANZAD_C2S_PUBLIC_ADDRESS": HOST if bare else address}, address)


async def _until(predicate: object, what: str, timeout: float = 30) -> None:
    """Poll (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):  # type: ignore[arg-type]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout}s")
        await asyncio.sleep(0.1)


def _metric(cluster: Cluster, cm: str, name: str, **labels: str) -> float:
    return metric_value(cluster.metrics(cm), name, **labels)


async def _logged_in(accounts: Users, port: int, n: int) -> list[RawClient]:
    clients = []
    for _ in range(n):
        jid, pw = await accounts.create("placed")
        raw = RawClient(HOST, port)
        bound = await raw_login(raw, jid, pw)
        assert b"<jid>" in bound, bound
        clients.append(raw)
    return clients


async def _redirected_to(port: int) -> bytes:
    """A new client's stream after STARTTLS: everything the server sent before closing."""
    raw = RawClient(HOST, port)
    await raw.open()
    try:
        await raw.starttls()
        await raw.send(raw.header())
        return await raw.read_all(timeout=15)
    finally:
        await raw.close()


async def _still_served(clients: list[RawClient]) -> None:
    """Existing sessions are unaffected: each answers an XEP-0199 ping to the server."""
    for i, raw in enumerate(clients):
        answer = await ask_iq(raw, f"<iq type='get' id='still{i}'><ping xmlns='urn:xmpp:ping'/>"
                                   "</iq>", f"still{i}")
        assert b'type="result"' in answer, answer


async def _close(clients: list[RawClient]) -> None:
    for raw in clients:
        await raw.close()


async def test_rfc6120_4_9_3_19_the_third_client_of_a_full_cm_goes_to_the_other_ones_direct_port(
    placed: Cluster, accounts: Users
) -> None:
    b_env, b_address = _direct(bare=True)
    a_env, _ = _direct()
    a_port = placed.start_cm("cm-a", **TINY, **a_env)
    b_port = placed.start_cm("cm-b", **TINY, **b_env)
    clients: list[RawClient] = []
    try:
        await _until(lambda: _metric(placed, "cm-a", "stanzad_cm_placement_targets") == 1,
                     "cm-a seeing cm-b's load")
        assert placed.ready("cm-a")
        clients = await _logged_in(accounts, a_port, 2)
        await _until(lambda: not placed.ready("cm-a"), "cm-a full: /readyz failing")
        data = await _redirected_to(a_port)
        assert SEE_OTHER_HOST + b_address.encode() + b"</see-other-host>" in data, data
        assert b"<stream:features" not in data.split(b"<proceed", 1)[-1]  # nothing offered
        assert data.rstrip().endswith(b"</stream:stream>")
        text = placed.metrics("cm-a")
        assert metric_value(text, "stanzad_cm_redirects_total", reason="load") == 1
        assert metric_value(text, "stanzad_cm_full") == 1
        assert metric_value(text, "stanzad_cm_connection_capacity") == 4
        # the client follows: served on cm-b's direct port, the same 'to'
        clients += await _logged_in(accounts, int(b_address.rpartition(":")[2]), 1)
        # a stream on a direct port is never redirected, even on a full one: no loop
        clients += await _logged_in(accounts, int(a_env["STANZAD_C2S_DIRECT_PORT"]), 1)
        await _still_served(clients)
        assert _metric(placed, "cm-a", "stanzad_cm_redirects_total", reason="load") == 1
        assert placed.ready("cm-b") and b_port
    finally:
        await _close(clients)
        placed.kill("cm-a", signal.SIGTERM)
        placed.kill("cm-b", signal.SIGTERM)


async def test_without_direct_addressing_a_full_cm_fails_readyz_and_still_serves(
    placed: Cluster, accounts: Users
) -> None:
    port = placed.start_cm("cm-c", **TINY)
    clients: list[RawClient] = []
    try:
        clients = await _logged_in(accounts, port, 2)
        await _until(lambda: not placed.ready("cm-c"), "cm-c full: /readyz failing")
        clients += await _logged_in(accounts, port, 1)  # refused by no one
        await _still_served(clients)
        text = placed.metrics("cm-c")
        assert metric_value(text, "stanzad_cm_full_accepted_total",
                            reason="no_direct_addressing") >= 1
        assert metric_value(text, "stanzad_cm_redirects_total", reason="load") == 0
        await _close(clients)  # below the low-water mark: ready again
        clients = []
        await _until(lambda: placed.ready("cm-c"), "cm-c ready again")
    finally:
        await _close(clients)
        placed.kill("cm-c", signal.SIGTERM)


async def _ghost(accounts: Users, cm_id: str, load: Load, lives_s: int) -> None:
    """A load record as a heartbeat writes it, that Redis keeps ``lives_s`` more seconds."""
    await accounts.redis.set(keys.cm_load(cm_id), load.encode(), ex=lives_s)
    await accounts.redis.sadd(keys.CMS, cm_id)


async def test_a_stale_or_full_peer_is_never_a_target_and_a_fresh_one_is(
    placed: Cluster, accounts: Users
) -> None:
    env, _ = _direct()
    port = placed.start_cm("cm-d", **TINY, **env)
    ghosts = ("cm-stale", "cm-full", "cm-fresh")
    elsewhere = f"{HOST}:{localservers.free_port()}"
    clients: list[RawClient] = []
    try:
        roomy = Load(address=elsewhere, connections=0, capacity=100, high_water=0.9, cpu=0.0,
                     full=False, ttl_s=100)
        # written 60 s ago by its heartbeat's count (100 s lifetime, 40 s left): stale
        await _ghost(accounts, "cm-stale", roomy, 40)
        await _ghost(accounts, "cm-full", Load(elsewhere, 1, 100, 0.9, 0.0, True, 100), 100)
        await _until(lambda: _metric(placed, "cm-d", "stanzad_cm_placement_peers") == 3,
                     "cm-d reading the ghosts' loads")
        assert _metric(placed, "cm-d", "stanzad_cm_placement_targets") == 0
        clients = await _logged_in(accounts, port, 2)
        await _until(lambda: not placed.ready("cm-d"), "cm-d full")
        clients += await _logged_in(accounts, port, 1)  # nowhere to go: served here
        text = placed.metrics("cm-d")
        assert metric_value(text, "stanzad_cm_full_accepted_total", reason="no_target") >= 1
        assert metric_value(text, "stanzad_cm_redirects_total", reason="load") == 0
        # the same record, fresh: a target
        await _ghost(accounts, "cm-fresh", roomy, 100)
        await _until(lambda: _metric(placed, "cm-d", "stanzad_cm_placement_targets") == 1,
                     "cm-d seeing the fresh peer")
        data = await _redirected_to(port)
        assert SEE_OTHER_HOST + elsewhere.encode() + b"</see-other-host>" in data, data
        await _still_served(clients)
    finally:
        await _close(clients)
        for ghost in ghosts:
            await accounts.redis.delete(keys.cm_load(ghost))
            await accounts.redis.srem(keys.CMS, ghost)
        placed.kill("cm-d", signal.SIGTERM)
