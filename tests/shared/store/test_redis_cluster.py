"""The Redis-dependent stores on a real Redis Cluster (three primaries with a replica each,
the `redis_cluster` fixture): ``redis+cluster://`` URLs, the ACL users of every role on every
node, each Lua script and ``MULTI`` transaction in one hash slot (shared/store/keys.py hash
tags), pipelines split by node; then a small cluster of services on it (login and chat), and
a primary killed: its replica takes over, the services carry on (sessions may have to be
re-established), what PostgreSQL holds and what was replicated is all there."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, RedisClusterException, ResponseError

from devtools import localservers
from devtools.localservers import LocalPostgres
from shared.cluster.partitions import PartitionManager
from shared.store import acl, keys, tick
from shared.store.auth_throttle import AuthThrottleStore, Progressive
from shared.store.cm_index import CmIndex
from shared.store.presence import PresenceStore
from shared.store.redis import connect, hosts_of, mode, redacted
from shared.store.sessions import SessionLimitReached, SessionRecord, SessionStore
from tests.conftest import Users
from tests.support import redis_cluster as rc
from tests.support.cluster import Cluster, new_cluster
from tests.support.redis_cluster import RedisClusterServers
from tests.support.xmpp import RawClient, ask_iq, eventually, raw_login

pytestmark = pytest.mark.redis_cluster


# ---- the URL forms (no server) --------------------------------------------------------------


def test_the_scheme_selects_the_kind_of_client() -> None:
    assert mode("redis://u:p@h:6379/0") == mode("rediss://h") == "single"
    assert mode("redis+cluster://u:p@a:7000,b:7001") == "cluster"
    assert mode("rediss+cluster://a:7000") == "cluster"
    assert mode("redis+sentinel://a:26379,b/mymaster") == "sentinel"
    assert hosts_of("redis+cluster://u:p@a:7000,[::1]:7001,c") == [
        ("a", 7000), ("::1", 7001), ("c", 6379)]
    assert hosts_of("redis+sentinel://a,b:5000/svc") == [("a", 26379), ("b", 5000)]
    assert redacted("redis+cluster://router:s3cret@a:1,b:2") == "redis+cluster://router:***@a:1,b:2"


def test_a_cluster_url_with_another_database_is_refused() -> None:
    with pytest.raises(ValueError, match="database 0 only"):
        connect("redis+cluster://127.0.0.1:7000/3")
    with pytest.raises(ValueError, match="service"):
        connect("redis+sentinel://127.0.0.1:26379")


def test_the_keys_changed_together_share_one_hash_slot() -> None:
    """The keys of each script and transaction (Redis Cluster refuses them across slots,
    CROSSSLOT): one bare JID's, one connection manager's, one room's, one caps ver's."""
    from redis.crc import key_slot

    bare, full, cm, room = "a@x", "a@x/r", "cm-1", "room@conf.x"
    ver = "q07IKJEyjvHSyhy//CH0CxmKi8w="
    groups = [
        [keys.sessions(bare), keys.sessions_version(bare), keys.presence(bare),
         keys.directed_presence(full), keys.sm_facts(bare, "s1"), keys.account(bare),
         keys.auth_failures_account(bare), keys.auth_lock_account(bare),
         keys.auth_failures_pair(bare, "1.2.3.4"), keys.auth_lock_pair(bare, "1.2.3.4"),
         keys.avatar_hash(bare), keys.pep_resources(bare), keys.pep_remote(bare)],
        [keys.auth_failures_source("1.2.3.4"), keys.auth_block_source("1.2.3.4")],
        [keys.cm_sessions(cm), keys.cm_addresses(cm), keys.cm_alive(cm), keys.cm_load(cm)],
        [keys.muc_occupants(room), keys.muc_history(room)],
        [keys.caps_features(ver), keys.caps_pending(ver), keys.caps_waiting(ver)],
    ]
    for group in groups:
        assert len({key_slot(k.encode()) for k in group}) == 1, group


# ---- the stores on the cluster -------------------------------------------------------------


@pytest.fixture
async def client(redis_cluster: RedisClusterServers) -> AsyncIterator[aioredis.Redis]:
    r = connect(redis_cluster.url())
    yield r
    await r.aclose()


async def spread(r: aioredis.Redis, n: int = 12) -> list[str]:
    """``n`` fresh bare JIDs whose keys land on more than one primary."""
    await r.initialize()  # type: ignore[attr-defined]  # the slot map
    jids = [f"u{i}-{secrets.token_hex(3)}@cluster.test" for i in range(n)]
    nodes = {r.get_node_from_key(keys.sessions(j)).name for j in jids}  # type: ignore[attr-defined]
    assert len(nodes) > 1, "all on one node: the test would prove nothing"
    return jids


async def test_more_commands_at_once_than_connections_wait_for_one(
    client: aioredis.Redis,
) -> None:
    """redis-py's cluster nodes raise MaxConnectionsError past their pool; the factory's
    client makes the surplus wait, as the blocking pool of a single Redis does."""
    from shared.store.redis import MAX_CONNECTIONS

    key = f"burst:{{{secrets.token_hex(3)}}}"  # one slot: every command on one node
    await client.initialize()  # type: ignore[attr-defined]  # else the first ones queue on it
    n = MAX_CONNECTIONS * 16  # bounded; redis-py's own client fails at this (measured)
    replies = await asyncio.gather(*(client.incr(key) for _ in range(n)))
    assert sorted(replies) == list(range(1, n + 1))


async def test_every_role_logs_in_on_every_node_and_keeps_to_its_keys(
    redis_cluster: RedisClusterServers,
) -> None:
    """The ACL is per node: every node has each role's user (redis-server reads the same
    ACL file), with ``CLUSTER SLOTS`` for the client's discovery and still nothing
    dangerous."""
    for role in acl.ROLES:
        r = connect(redis_cluster.url(role))
        try:
            assert await r.ping()
            with pytest.raises(NoPermissionError):
                await r.flushall()
        finally:
            await r.aclose()
    router = connect(redis_cluster.url("router"))
    muc = connect(redis_cluster.url("muc"))
    try:
        jids = await spread(router)
        for j in jids:  # the router's own keys, on every primary
            await router.hset(keys.sessions(j), "r", "cm s 0 1")
        with pytest.raises(NoPermissionError):  # another role's keys, refused on every node
            await muc.hgetall(keys.sessions(jids[0]))
        for port in redis_cluster.alive():  # replicas too: they serve after a failover
            assert rc.command(port, "PING", auth=redis_cluster.auth, user="router") == "+PONG"
    finally:
        await router.aclose()
        await muc.aclose()


async def test_session_table_scripts_on_the_cluster(client: aioredis.Redis) -> None:
    store = SessionStore(client, "tests")
    jids = await spread(client)
    for i, bare in enumerate(jids):
        full = f"{bare}/desk"
        rec = SessionRecord("cm-a", f"s{i}", 0, False)
        result = await store.bind(full, rec, max_sessions=2)
        assert result.version == 1 and result.replaced is None
        again = await store.bind(full, SessionRecord("cm-a", f"t{i}"), max_sessions=2)
        assert again.replaced == rec  # RFC 6120 §7.7.2.2: the old session is named
        await store.bind(f"{bare}/phone", SessionRecord("cm-a", f"p{i}"), max_sessions=2)
        with pytest.raises(SessionLimitReached):
            await store.bind(f"{bare}/third", SessionRecord("cm-a", f"x{i}"), max_sessions=2)
        assert await store.update(full, SessionRecord("cm-a", f"t{i}", 5, True)) > 0
        assert await store.update(full, SessionRecord("cm-a", "stale", 5, True)) == 0
        assert await store.set_carbons(full, f"cm-a t{i}", True) > 0
        moved = await store.move(full, f"cm-a t{i}", "cm-b")
        assert moved is not None and moved.replaced is not None
        assert moved.replaced.cm_id == "cm-b" and moved.replaced.carbons
        table = await store.get(bare)
        assert table["desk"].priority == 5 and table["desk"].available
    assert [set(t) for t in await store.get_many(jids)] == [{"desk", "phone"}] * len(jids)
    assert set(await store.cm_sessions("cm-a")) >= {f"{j}/phone" for j in jids}
    await store.heartbeat("cm-a", 30, "127.0.0.1:5222")
    assert (await store.connection_managers())["cm-a"] is True
    # the load with the heartbeat, the peers' loads read back (keys on several nodes)
    await store.heartbeat("cm-b", 30, "127.0.0.1:5223", b"[1]")
    read = await store.heartbeat("cm-a", 30, "127.0.0.1:5222", b"[0]", peers=True)
    loads = {cm: raw for cm, raw, _ in read}
    assert loads["cm-a"] == b"[0]" and loads["cm-b"] == b"[1]"
    await store.retire("cm-b")
    removed = await store.reap("cm-a")  # the phones; the desks moved to cm-b
    assert {full for full, _ in removed} == {f"{j}/phone" for j in jids}
    for j in jids:
        assert await store.unbind(f"{j}/desk", SessionRecord("cm-b", "t" + str(jids.index(j))))
        assert await store.get(j) == {}


async def test_forget_account_removes_its_keys_across_the_cluster(client: aioredis.Redis) -> None:
    store = SessionStore(client, "tests")
    bare = (await spread(client))[0]
    await client.hset(keys.presence(bare), "r", "p")
    await client.set(keys.sm_facts(bare, "abc"), "f")
    await client.set(keys.auth_failures_account(bare), 3)
    await store.forget_account(bare)
    assert await client.exists(keys.presence(bare), keys.sm_facts(bare, "abc"),
                               keys.auth_failures_account(bare)) == 0


class _NoRosters:
    async def items(self, bare: str) -> dict[str, Any]:
        return {}


async def test_presence_script_and_transaction_on_the_cluster(client: aioredis.Redis) -> None:
    sessions = SessionStore(client, "tests")
    presence = PresenceStore(client, _NoRosters(), "tests")  # type: ignore[arg-type]
    jids = await spread(client)
    for i, bare in enumerate(jids):
        rec = SessionRecord("cm-p", f"s{i}")
        await sessions.bind(f"{bare}/r", rec, 5)
        version, new, _ = await presence.go_available(
            f"{bare}/r", SessionRecord("cm-p", f"s{i}", 1, True), b"<presence/>")
        assert version > 0 and new
        await presence.directed(f"{bare}/r", "room@conf.test", True)
    available = await presence.available(jids)
    assert all(a == {"r": b"<presence/>"} for a in available)
    for bare in jids:
        was, targets = await presence.set_unavailable(f"{bare}/r")  # MULTI over two keys
        assert was and targets == ["room@conf.test"]
    assert await presence.available(jids) == [{}] * len(jids)


class _Accounts:
    def credentials(self, bare: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


async def test_login_throttle_scripts_on_the_cluster(client: aioredis.Redis) -> None:
    throttle = AuthThrottleStore(
        client, _Accounts(), "tests", pair=Progressive(1, 60, 600),  # type: ignore[arg-type]
        account=Progressive(3, 60, 600), reset_s=600, block_per_min=3, block_s=60)
    jids = await spread(client)
    source = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.1"
    await client.script_flush()  # the scripts must load themselves on every primary
    blocked = [await throttle.failed(source, bare) for bare in jids[:3]]
    assert blocked == [False, False, True]  # the third failure a minute blocks the address
    check = await throttle.lookup(source, jids[0])
    assert check.refused == "ip" and check.source_failures == 3
    check = await throttle.lookup("10.255.255.254", jids[0])  # another address: free
    assert check.refused is None and not check.pair_failures


async def test_tick_groups_mixing_slots_and_the_session_index(client: aioredis.Redis) -> None:
    t = tick.of(client)
    jids = await spread(client)
    futures = [t.execute((("HSET", keys.presence(j), "r", "x"), ("HGETALL", keys.presence(j))))
               for j in jids]
    replies = await asyncio.gather(*futures)
    assert all(r == [1, {b"r": b"x"}] for r in replies)
    index = CmIndex(client, "tests", "cm-idx")
    for j in jids:
        index.add(f"{j}/r", "127.0.0.1:1")
    await index.flush()
    assert await client.scard(keys.cm_sessions("cm-idx")) == len(jids)


async def test_partition_leases_and_hand_over_on_the_cluster(client: aioredis.Redis) -> None:
    role = f"rc{secrets.token_hex(2)}"
    taken: dict[str, set[int]] = {"a": set(), "b": set()}

    def manager(name: str) -> PartitionManager:
        async def acquire(p: int, previous: str | None) -> None:
            taken[name].add(p)

        async def release(p: int) -> None:
            taken[name].discard(p)

        return PartitionManager(client, role, name, 8, 3.0, acquire, release)

    a, b = manager("a"), manager("b")
    await a.tick()
    assert a.held == set(range(8))
    await client.script_flush()  # renewing in a cluster pipeline loads the script again
    await a.tick()
    assert a.held == set(range(8))
    await b.tick()  # b announces itself; a gives up b's share, leaving hand-over marks
    await a.tick()
    await asyncio.sleep(0.1)
    await b.tick()
    assert a.held | b.held == set(range(8)) and not a.held & b.held and b.held
    owners = await a.owners()
    assert {p for p, o in owners.items() if o == "b"} == b.held
    await a.stop()
    await b.stop()


async def test_a_transaction_across_slots_is_refused(client: aioredis.Redis) -> None:
    """What the hash tags avoid: Redis Cluster runs no MULTI over keys of two slots."""
    jids = await spread(client)
    a = jids[0]
    b = next(j for j in jids if client.keyslot(keys.presence(j))  # type: ignore[attr-defined]
             != client.keyslot(keys.presence(a)))  # type: ignore[attr-defined]
    with pytest.raises((ResponseError, RedisClusterException)):  # CROSSSLOT
        async with client.pipeline(transaction=True) as pipe:
            pipe.set(keys.presence(a), 1)
            pipe.set(keys.presence(b), 1)
            await pipe.execute()


# ---- Sentinel --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel() -> Iterator[tuple[str, localservers.RedisAuth]]:
    """A primary and one Sentinel that watches it as ``stanzad-test``."""
    workdir = Path(tempfile.mkdtemp(prefix="stanzad-sentinel-"))
    auth = localservers.redis_auth(workdir)
    port, sport = localservers.free_port(), localservers.free_port()
    procs = []
    try:
        procs.append(localservers.start(localservers.redis_command(
            port, workdir, aof=False, config=auth.config), workdir / "redis.log"))
        localservers.wait_port("127.0.0.1", port, proc=procs[0])
        conf = workdir / "sentinel.conf"  # Sentinel rewrites its file: one of its own
        conf.write_text(
            f"port {sport}\nbind 127.0.0.1\nsentinel monitor stanzad-test 127.0.0.1 {port} 1\n"
            f"sentinel auth-user stanzad-test {auth.user}\n"
            f"sentinel auth-pass stanzad-test {auth.password}\n")
        procs.append(localservers.start([localservers.redis_server_path(), str(conf),
                                         "--sentinel"], workdir / "sentinel.log"))
        localservers.wait_port("127.0.0.1", sport, proc=procs[1])
        yield f"127.0.0.1:{sport}", auth
    finally:
        for proc in procs:
            localservers.stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


async def test_a_sentinel_url_reaches_the_primary_as_the_role(
    sentinel: tuple[str, localservers.RedisAuth],
) -> None:
    where, auth = sentinel
    r = connect(f"redis+sentinel://router:{auth.passwords['router']}@{where}/stanzad-test")
    try:
        store = SessionStore(r, "tests")
        result = await store.bind("s@sentinel.test/r", SessionRecord("cm", "s1"), 5)
        assert result.version == 1
        assert set(await store.get("s@sentinel.test")) == {"r"}
        with pytest.raises(NoPermissionError):  # still the router's ACL user
            await r.get(keys.muc_history("room@conf"))
    finally:
        await r.aclose()


# ---- services on the cluster, then a failover ------------------------------------------------


@pytest.fixture(scope="module")
def services(postgres: LocalPostgres, redis_cluster: RedisClusterServers) -> Iterator[Cluster]:
    """Router, presence, roster and a connection manager, each logged in to the Redis
    Cluster as its role."""
    c = new_cluster()
    c.redis_cluster = redis_cluster
    try:
        c.start_servers()
        c.start_core()
        c.start_cm()
        yield c
    finally:
        c.stop()


async def _login(cluster: Cluster, jid: str, pw: str, resource: str) -> RawClient:
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    bound = await raw_login(raw, jid, pw, resource)
    assert b'type="result"' in bound, bound
    await raw.send(b"<presence/>")
    return raw


async def _available(users: Users, *bares: str) -> None:
    """Until each has an available resource: a message to a bare JID without one is stored
    offline instead (RFC 6121 §8.5.2)."""

    async def check() -> bool:
        for bare in bares:
            table = await SessionStore(users.redis, "tests").get(bare)
            if not any(r.available for r in table.values()):
                return False
        return True

    await eventually(check, 15, "available resources")


async def _chat(a: RawClient, b: RawClient, b_jid: str, body: str) -> bool:
    await a.send(f"<message to='{b_jid}' type='chat'><body>{body}</body></message>".encode())
    try:
        await b.read_until(body.encode(), timeout=5)
        return True
    except (TimeoutError, ConnectionError):
        return False


async def test_login_and_chat_through_services_on_the_cluster(services: Cluster) -> None:
    users = await Users(services).open()
    try:
        alice, pw = await users.create("alice")
        bob, _ = await users.create("bob")
        a = await _login(services, alice, pw, "desk")
        b = await _login(services, bob, pw, "desk")
        try:
            await _available(users, alice, bob)
            for i in range(5):
                assert await _chat(a, b, bob, f"hello-{i}")
                assert await _chat(b, a, alice, f"back-{i}")
            assert set(await SessionStore(users.redis, "tests").get(alice)) == {"desk"}
        finally:
            await a.close()
            await b.close()
    finally:
        await users.close()


async def test_a_primary_killed_its_replica_takes_over_and_nothing_durable_is_lost(
    services: Cluster, redis_cluster: RedisClusterServers,
) -> None:
    """A primary SIGKILLed (the one serving alice's session keys): its replica is promoted
    within the node timeout; the services keep their clients, so sessions may have to be
    re-established (a session written after the last replication is gone with the primary);
    the offline message and the vCard (PostgreSQL) are there; every key written and
    replicated before the kill (WAIT) is there, on whichever node serves it now."""
    users = await Users(services).open()
    try:
        alice, pw = await users.create("alice")
        bob, _ = await users.create("bob")
        a = await _login(services, alice, pw, "desk")
        try:
            reply = await ask_iq(a, "<iq type='set' id='v1'><vCard xmlns='vcard-temp'>"
                                    "<FN>Alice Failover</FN></vCard></iq>", "v1")
            assert b'type="result"' in reply
            await a.send(f"<message to='{bob}' type='chat'><body>kept over the failover"
                         "</body></message>".encode())
            await eventually(lambda: _offline_is(users, bob, 1), 10, "offline message stored")
        finally:
            await a.close()

        marks = {f"failover-mark:{{{i}}}": str(i) for i in range(64)}  # on every primary
        for k, v in marks.items():
            await users.redis.set(k, v)
        for port in redis_cluster.primaries():  # replicated before the kill
            assert rc.command(port, "WAIT", "1", "5000", auth=redis_cluster.auth) == ":1"
        victim = users.redis.get_node_from_key(keys.sessions(alice)).port  # type: ignore[attr-defined]
        replica = redis_cluster.replica_of(victim)
        redis_cluster.kill(victim)
        redis_cluster.wait_ok(timeout_s=30)
        assert replica in redis_cluster.primaries()

        async def all_marks() -> bool:
            try:
                return {k: (await users.redis.get(k) or b"").decode() for k in marks} == marks
            except Exception:
                return False

        await eventually(all_marks, 20, "the replicated keys on the new primary")

        async def logs_in() -> bool:
            try:
                raw = await _login(services, alice, pw, "again")
            except (AssertionError, PermissionError, TimeoutError, ConnectionError):
                return False
            await raw.close()
            return True

        await eventually(logs_in, 30, "a login after the failover")
        a = await _login(services, alice, pw, "desk")
        b = await _login(services, bob, pw, "phone")
        try:
            await _available(users, alice, bob)
            got = await b.read_until(b"kept over the failover", timeout=15)  # XEP-0160
            assert alice.encode() in got
            vcard = await ask_iq(a, "<iq type='get' id='v2'><vCard xmlns='vcard-temp'/></iq>",
                                 "v2")
            assert b"<FN>Alice Failover</FN>" in vcard
            for i in range(3):
                assert await _chat(a, b, bob, f"after-{i}")
                assert await _chat(b, a, alice, f"reply-{i}")
        finally:
            await a.close()
            await b.close()
        assert await users.offline.count(bob) == 0
    finally:
        await users.close()
    # the killed node comes back as a replica of the promoted one
    redis_cluster.start_node(victim)
    redis_cluster.wait_ok(timeout_s=30)


async def _offline_is(users: Users, bare: str, n: int) -> bool:
    return await users.offline.count(bare) == n
