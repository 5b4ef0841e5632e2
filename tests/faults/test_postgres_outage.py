"""PostgreSQL away, at start and while chat runs (issue 15): services wait for it without
exiting (not ready meanwhile), chat between online users goes on, a login and a roster set
fail with a proper error, and both succeed again once it is back, with no service restarted.

The cluster has a PostgreSQL of its own (not the session's): the test stops and starts it.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Iterator

import pytest

from devtools import localservers
from tests.conftest import Users
from tests.support.cluster import Cluster, new_cluster
from tests.support.xmpp import RawClient, eventually, raw_auth, raw_login

HOST = "127.0.0.1"
SERVICES = ("router-1", "presence-1", "roster-1", "cm-1")


@pytest.fixture
def outage() -> Iterator[tuple[Cluster, localservers.LocalPostgres]]:
    c = new_cluster()
    # durable (fsync and synchronous commit on) as deployed: the test kills it with SIGQUIT,
    # and without them the accounts committed just before could be lost in the crash
    pg = localservers.LocalPostgres(c.workdir / "pg", localservers.free_port(), durable=True)
    pg.init()  # not started: the services come up first
    c.database_url = pg.url
    try:
        c.start_servers()
        yield c, pg
    finally:
        c.stop()
        pg.stop()


def _kill(pg: localservers.LocalPostgres) -> None:
    """Immediate shutdown (SIGQUIT): every backend ends at once, nothing is checkpointed; the
    next start recovers from the WAL, as after a crash."""
    assert pg.proc is not None
    pg.proc.send_signal(signal.SIGQUIT)
    pg.proc.wait(15)
    pg.proc = None


_ids = itertools.count()


async def _chat(sender: RawClient, to: str, receiver: RawClient) -> None:
    body = f"during-outage-{next(_ids)}"
    await sender.send(f"<message to='{to}' type='chat'><body>{body}</body></message>".encode())
    await receiver.read_until(body.encode(), timeout=10)


async def _roster_set(client: RawClient, contact: str) -> bytes:
    iq_id = f"r{next(_ids)}"
    await client.send(
        f"<iq type='set' id='{iq_id}'><query xmlns='jabber:iq:roster'>"
        f"<item jid='{contact}' name='c'/></query></iq>".encode())
    reply = b""
    for _ in range(10):  # roster pushes may come first
        reply += await client.read_until(b"</iq>", timeout=15)
        if iq_id.encode() in reply:
            return reply
    raise AssertionError(f"no answer to the roster set: {reply!r}")


async def _login_reply(port: int, jid: str, password: str) -> bytes:
    """The SASL outcome of a fresh connection: ``<success`` or the failure element."""
    client = RawClient(HOST, port)
    try:
        await raw_auth(client, jid, password)
        return b"<success/>"
    except PermissionError as exc:
        return str(exc).encode()
    finally:
        await client.close()


async def test_postgres_away_at_start_and_during_chat(
    outage: tuple[Cluster, localservers.LocalPostgres],
) -> None:
    cluster, pg = outage
    # RFC 6121 §2.1.5 roster sets and RFC 6120 §6.4 SASL need the store of record; chat
    # between two bound sessions (RFC 6120 §8.5.3.1 full-JID routing) does not
    port = localservers.free_port()
    cluster.start_service("router-1", "services.router", STANZAD_ROUTER_ID="router-1")
    cluster.start_service("presence-1", "services.presence", STANZAD_PRESENCE_ID="presence-1")
    cluster.start_service("roster-1", "services.roster", STANZAD_ROSTER_ID="roster-1")
    cluster.start_service(
        "cm-1", "services.connection_manager", STANZAD_CM_ID="cm-1",
        STANZAD_C2S_PORT=str(port), STANZAD_DB_TIMEOUT_S="2",
        STANZAD_TLS_CERT=str(cluster.workdir / "tls" / "cert.pem"),
        STANZAD_TLS_KEY=str(cluster.workdir / "tls" / "key.pem"))
    cluster.c2s_ports.append(port)

    # without PostgreSQL at start: up (the side port answers) but not ready, and no exit
    deadline = time.monotonic() + 60
    while not all(_answers(cluster, name) for name in SERVICES):
        assert time.monotonic() < deadline, "side ports never answered"
        for name in SERVICES:
            assert cluster.procs[name].poll() is None, cluster.log(name)
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)  # a few retries of the pool
    for name in SERVICES:
        assert cluster.procs[name].poll() is None, f"{name} exited:\n{cluster.log(name)}"
        assert not cluster.ready(name), name

    pg.start(cluster.workdir / "postgres.log")
    for name in SERVICES:
        cluster.wait_ready(name, timeout_s=60)

    users = await Users(cluster).open()
    alice_raw, bob_raw = RawClient(HOST, port), RawClient(HOST, port)
    try:
        (alice, pw), (bob, _) = await users.create("alice"), await users.create("bob")
        late, late_pw = await users.create("late")
        await users.db.close()  # the test's own pool is not what is tested
        await raw_login(alice_raw, alice, pw, resource="a")
        await raw_login(bob_raw, bob, pw, resource="b")
        await _chat(alice_raw, f"{bob}/b", bob_raw)
        await _chat(bob_raw, f"{alice}/a", alice_raw)

        _kill(pg)
        for _ in range(3):  # chat goes on
            await _chat(alice_raw, f"{bob}/b", bob_raw)
            await _chat(bob_raw, f"{alice}/a", alice_raw)
        reply = await _login_reply(port, late, late_pw)
        assert b"<temporary-auth-failure/>" in reply, reply  # RFC 6120 §6.5.11
        reply = await _roster_set(alice_raw, late)
        assert b"resource-constraint" in reply and b"error" in reply, reply  # RFC 6120 §8.3.3.18
        await eventually(lambda: not cluster.ready("cm-1"), 15, "cm-1 not ready")
        await _chat(alice_raw, f"{bob}/b", bob_raw)

        pg.start(cluster.workdir / "postgres.log")  # the same data: a crash recovery

        async def login_works() -> bool:
            return b"<success" in await _login_reply(port, late, late_pw)

        await eventually(login_works, 30, "a login after PostgreSQL came back")

        async def roster_works() -> bool:
            reply = await _roster_set(alice_raw, late)
            return b"result" in reply and b"resource-constraint" not in reply

        await eventually(roster_works, 30, "a roster set after PostgreSQL came back")
        for name in SERVICES:
            await eventually(lambda n=name: cluster.ready(n), 30, f"{name} ready again")
            assert cluster.procs[name].poll() is None
        await _chat(alice_raw, f"{bob}/b", bob_raw)
    finally:
        await alice_raw.close()
        await bob_raw.close()
        await users.close()


def _answers(cluster: Cluster, name: str) -> bool:
    """The service's side port answers /readyz (200 or 503)."""
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{cluster.side_ports[name]}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
