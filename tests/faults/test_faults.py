"""Faults of a distributed deployment, with real processes killed and restarted.

One cluster for the module: nats-server, redis-server with AOF, two routers and a connection
manager, with short lifetimes (STANZAD_SESSION_TTL_S=2, STANZAD_LEASE_TTL_S=2) so that
recovery happens in seconds.  Every test leaves the cluster running for the next.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from shared.bus import subjects
from shared.cluster.partitions import PartitionManager
from shared.store import keys
from shared.store.redis import connect as redis_connect
from tests.conftest import Users
from tests.support.cluster import Cluster, new_cluster
from tests.support.xmpp import Client, RawClient, raw_login

HOST = "127.0.0.1"
SHORT = {"STANZAD_SESSION_TTL_S": "2"}
ROUTER = {**SHORT, "STANZAD_LEASE_TTL_S": "2"}


@pytest.fixture(scope="module")
def faulty() -> Iterator[Cluster]:
    c = new_cluster()
    c.aof = True
    c.partitions = 8
    try:
        c.start_servers()
        c.start_router("router-a", **ROUTER)
        c.start_router("router-b", **ROUTER)
        c.start_presence(**ROUTER)  # availability and the reaper of dead connection managers
        c.start_roster(**ROUTER)
        c.start_cm("cm-a", **SHORT)
        yield c
    finally:
        c.stop()


@pytest.fixture
async def accounts(faulty: Cluster) -> AsyncIterator[Users]:
    u = Users(faulty)
    yield u
    await u.close()


async def _wait(predicate: object, timeout: float, what: str, step: float = 0.1) -> float:
    """Poll `predicate` (sync or async) until true; return the seconds it took."""
    started = time.monotonic()
    while True:
        result = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what} not within {timeout}s")
        await asyncio.sleep(step)


async def _pair(cluster: Cluster, users: Users, port: int) -> tuple[Client, str, Client, str]:
    (a, a_pw), (b, b_pw) = await users.create(), await users.create()
    alice, bob = Client(a + "/f", a_pw), Client(b + "/f", b_pw)
    await alice.login(HOST, port)
    await bob.login(HOST, port)
    return alice, a, bob, b


async def _next_message(client: Client, timeout: float = 10) -> object:
    return await asyncio.wait_for(client.messages.get(), timeout)


async def test_nats_restart_clients_stay_and_nothing_is_lost_silently(
    faulty: Cluster, accounts: Users
) -> None:
    alice, _, bob, b = await _pair(faulty, accounts, faulty.c2s_ports[0])
    dropped: list[str] = []
    for c in (alice, bob):
        c.add_event_handler("disconnected", lambda *_, c=c: dropped.append(str(c.boundjid)))
    try:
        alice.send_message(mto=b + "/f", mbody="before", mtype="chat")
        assert (await _next_message(bob))["body"] == "before"
        faulty.kill("nats")
        await _wait(lambda: not faulty.ready("cm-a"), 10, "cm-a noticing NATS is gone")
        # sent while NATS is down: bounced to the sender at once, never silently dropped
        alice.send_message(mto=b + "/f", mbody="during", mtype="chat")
        bounce = await _next_message(alice)
        assert bounce["type"] == "error" and bounce["error"]["condition"] == "resource-constraint"
        started = time.monotonic()
        faulty.start_nats()
        for name in ("cm-a", "router-a", "router-b"):
            await _wait(lambda name=name: faulty.ready(name), 15, f"{name} reconnecting")
        recovered = time.monotonic() - started
        alice.send_message(mto=b + "/f", mbody="after", mtype="chat")
        got = await _next_message(bob)
        assert got["body"] == "after", got
        assert bob.messages.empty()  # 'during' was never delivered late either
        assert not dropped, f"clients were disconnected: {dropped}"
        print(f"recovered {recovered:.1f}s after NATS came back")  # the waits above bound it
    finally:
        await alice.logout()
        await bob.logout()


async def test_redis_restart_with_aof_keeps_accounts_and_sessions_work(
    faulty: Cluster, accounts: Users
) -> None:
    alice, a, bob, b = await _pair(faulty, accounts, faulty.c2s_ports[0])
    late, late_pw = await accounts.create()
    await asyncio.sleep(1.5)  # appendfsync everysec: the account is on disk after a second
    try:
        faulty.kill("redis")
        faulty.start_redis()
        after = await Users(faulty).open()
        try:
            assert await after.accounts.exists(late)  # loaded back from the AOF
            assert await after.redis.hlen(keys.sessions(a)) == 1  # session table too
        finally:
            await after.close()
        client = Client(late + "/new", late_pw)
        await client.login(HOST, faulty.c2s_ports[0])  # a login reads the account
        await client.logout()

        async def delivered() -> bool:  # the router's first Redis command may fail once
            alice.send_message(mto=b + "/f", mbody="after-redis", mtype="chat")
            try:
                msg = await _next_message(bob, timeout=2)
            except TimeoutError:
                return False
            return bool(msg["body"] == "after-redis")

        await _wait(delivered, 15, "routing after the Redis restart")
    finally:
        await alice.logout()
        await bob.logout()


async def test_killed_connection_manager_sessions_are_reaped_within_30s(
    faulty: Cluster, accounts: Users
) -> None:
    port = faulty.start_cm("cm-doomed", **SHORT)
    jid, pw = await accounts.create()
    raw = RawClient(HOST, port)
    try:
        await raw_login(raw, jid, pw, resource="doomed")
        assert await accounts.redis.hget(keys.sessions(jid), "doomed") is not None

        async def indexed() -> bool:  # written in the tick after the bind (CmIndex)
            members = await accounts.redis.smembers(keys.cm_sessions("cm-doomed"))
            return f"{jid}/doomed".encode() in members

        await _wait(indexed, 10, "the session in the connection manager's index")
        faulty.kill("cm-doomed")  # SIGKILL: no unbind, no retire
        took = await _wait(_gone(accounts, jid), 30, "reaping the dead pod's sessions")
        print(f"sessions of a SIGKILLed connection manager reaped after {took:.1f}s")
        assert took < 30
        members = await accounts.redis.smembers(keys.cm_sessions("cm-doomed"))
        assert not members
    finally:
        await raw.close()


def _gone(users: Users, jid: str) -> object:
    async def check() -> bool:
        return await users.redis.hlen(keys.sessions(jid)) == 0

    return check


async def _owners(cluster: Cluster) -> dict[int, str | None]:
    redis = redis_connect(cluster.redis_url)

    async def noop(_: int) -> None:
        return None

    try:
        return await PartitionManager(redis, "route", "probe", cluster.partitions, 1.0, noop,
                                      noop).owners()
    finally:
        await redis.aclose()


async def test_killed_router_partitions_are_taken_over_in_seconds_and_order_is_kept(
    faulty: Cluster, accounts: Users
) -> None:
    async def split() -> bool:
        return set((await _owners(faulty)).values()) == {"router-a", "router-b"}

    await _wait(split, 20, "both routers holding partitions", step=0.2)
    owners = await _owners(faulty)
    receiver = None
    while receiver is None:  # a receiver whose partition router-b owns
        jid, pw = await accounts.create()
        if owners[subjects.partition(jid, faulty.partitions)] == "router-b":
            receiver = (jid, pw)
    sender_jid, sender_pw = await accounts.create()
    sender, bob = Client(sender_jid + "/s", sender_pw), Client(receiver[0] + "/r", receiver[1])
    await sender.login(HOST, faulty.c2s_ports[0])
    await bob.login(HOST, faulty.c2s_ports[0])
    try:
        n, killed_at = 0, 0.0

        async def send_for(seconds: float) -> None:
            nonlocal n
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sender.send_message(mto=receiver[0] + "/r", mbody=str(n), mtype="chat")
                n += 1
                await asyncio.sleep(0.02)

        await send_for(1.0)
        faulty.kill("router-b")
        killed_at = time.monotonic()

        async def taken_over() -> bool:
            return set((await _owners(faulty)).values()) == {"router-a"}

        sending = asyncio.create_task(send_for(4.0))
        takeover = await _wait(taken_over, 15, "router-a taking every partition", step=0.1)
        await sending
        got: list[int] = []
        while True:
            try:
                msg = await _next_message(bob, timeout=1.5)
            except TimeoutError:
                break
            assert msg["type"] != "error", msg
            got.append(int(msg["body"]))
        assert got == sorted(got) and len(set(got)) == len(got)  # RFC 6120 §10.1: in order
        assert got[-1] == n - 1  # everything after the takeover arrives
        lost = n - len(got)
        print(f"router takeover {takeover:.1f}s after SIGKILL (t={killed_at:.0f}); "
              f"{lost} of {n} stanzas lost in the hand-over")
        # durable delivery (the default): the dead router's partitions are replayed from
        # their streams by the new owner (core NATS lost 105 of 326 here)
        assert got == list(range(n))
    finally:
        await sender.logout()
        await bob.logout()
        faulty.start_router("router-b", **ROUTER)  # leave two routers for later tests


async def test_sigterm_drains_a_connection_manager_with_system_shutdown(
    faulty: Cluster, accounts: Users
) -> None:
    port = faulty.start_cm("cm-drain", **SHORT, STANZAD_DRAIN_TIMEOUT_S="3")
    jid, pw = await accounts.create()
    raw = RawClient(HOST, port)
    try:
        await raw_login(raw, jid, pw)
        proc = faulty.procs["cm-drain"]
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert not await asyncio.to_thread(faulty.ready, "cm-drain")
        await raw.expect_stream_error("system-shutdown", timeout=15)  # hang guards only
        await asyncio.to_thread(proc.wait, 20)
        took = time.monotonic() - started
        assert proc.returncode == 0, faulty.log("cm-drain")
        print(f"drained and exited in {took:.1f}s (drain timeout 3 s)")  # proc.wait bounds it
        with pytest.raises(OSError):
            await asyncio.open_connection(HOST, port)  # no longer accepting
        await _wait(_gone(accounts, jid), 15, "the drained session unbound")
    finally:
        await raw.close()


async def test_rfc6120_4_9_3_19_sigterm_with_redirect_sends_see_other_host(
    faulty: Cluster, accounts: Users
) -> None:
    port = faulty.start_cm("cm-redirect", **SHORT, STANZAD_DRAIN_TIMEOUT_S="3",
                           STANZAD_SHUTDOWN_REDIRECT="other.example:5222")
    jid, pw = await accounts.create()
    raw = RawClient(HOST, port)
    try:
        await raw_login(raw, jid, pw)
        faulty.procs["cm-redirect"].send_signal(signal.SIGTERM)
        data = await raw.read_all(timeout=5)
        assert (b'<see-other-host xmlns="urn:ietf:params:xml:ns:xmpp-streams">'
                b"other.example:5222</see-other-host>") in data
        assert data.rstrip().endswith(b"</stream:stream>")
        await asyncio.to_thread(faulty.procs["cm-redirect"].wait, 10)
    finally:
        await raw.close()


async def test_sigterm_loses_no_stanza_the_connection_manager_accepted(
    faulty: Cluster, accounts: Users
) -> None:
    """Everything the draining connection manager parsed and stamped reaches the bus."""
    port = faulty.start_cm("cm-accepting", **SHORT, STANZAD_DRAIN_TIMEOUT_S="3")
    (sender, s_pw), (receiver, r_pw) = await accounts.create(), await accounts.create()
    bob = Client(receiver + "/stays", r_pw)
    await bob.login(HOST, faulty.c2s_ports[0])
    raw = RawClient(HOST, port)
    n = 40
    try:
        await raw_login(raw, sender, s_pw)
        await raw.send(b"".join(
            f"<message to='{receiver}/stays' type='chat'><body>{i}</body></message>".encode()
            for i in range(n)
        ))

        def accepted() -> bool:
            for line in faulty.metrics("cm-accepting").splitlines():
                if line.startswith('stanzad_cm_stanzas_in_total{kind="message"}'):
                    return float(line.split()[-1]) >= n
            return False

        await _wait(accepted, 10, "all stanzas accepted")
        faulty.procs["cm-accepting"].send_signal(signal.SIGTERM)
        got = [int((await _next_message(bob))["body"]) for _ in range(n)]
        assert got == list(range(n))
        await asyncio.to_thread(faulty.procs["cm-accepting"].wait, 10)
    finally:
        await raw.close()
        await bob.logout()
