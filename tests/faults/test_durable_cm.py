"""Durable deliveries (docs/architecture.md, "Durable delivery on NATS JetStream"): a
connection manager SIGKILLed under load loses nothing it had taken.  A client with XEP-0198
resumes on another connection manager and gets every stanza it had not acknowledged,
exactly once, in order (§5); a client without it finds the messages that had reached the
dead connection manager in offline storage at its next login; a sender whose connection
manager dies had every message its 'h' counted delivered."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterator

import pytest

from tests.faults.test_durable import _accounts, _acked
from tests.support.cluster import Cluster, metric_value, new_cluster
from tests.support.xmpp import RawClient, eventually, raw_auth, raw_login, raw_sm_login

FAST = {"STANZAD_SESSION_TTL_S": "3", "STANZAD_SM_TAKEOVER_TIMEOUT_S": "1",
        "STANZAD_MAX_STANZAS_PER_S": "0", "STANZAD_MAX_INBOUND_BYTES_PER_S": "0"}
N = 120
UNHANDLED = 7  # read by the SM client before its connection manager died, not handled
BODY = re.compile(rb"<body>(\d+)</body>")
SM_NS = "urn:xmpp:sm:3"


def _two_cms(cm_a_env: dict[str, str]) -> Iterator[tuple[Cluster, int, int]]:
    c = new_cluster()
    c.partitions = 4
    try:
        c.start_servers()
        c.start_router("router-1", STANZAD_LEASE_TTL_S="2")
        c.start_presence(STANZAD_SESSION_TTL_S="3")
        c.start_roster()
        a = c.start_cm("cm-a", **cm_a_env)
        b = c.start_cm("cm-b", **FAST)
        yield c, a, b
    finally:
        c.stop()


@pytest.fixture
def two_cms() -> Iterator[tuple[Cluster, int, int]]:
    yield from _two_cms(FAST)


@pytest.fixture
def slow_beat_cms() -> Iterator[tuple[Cluster, int, int]]:
    """`two_cms`, cm-a's heartbeat lasting 30 s (a stopped cm-a is not drained)."""
    yield from _two_cms({**FAST, "STANZAD_SESSION_TTL_S": "30"})


async def _read_messages(client: RawClient, got: list[int], until: int,
                         timeout: float = 30) -> bytes:
    """Read complete messages into ``got`` until ``until`` is among them or the stream ends;
    what is left over (a partial stanza) is returned."""
    assert client.reader is not None
    data = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while until not in got:
        try:
            chunk = await asyncio.wait_for(client.reader.read(65536),
                                           max(0.1, deadline - loop.time()))
        except TimeoutError:
            break
        except ConnectionError:
            break
        if not chunk:
            break
        data += chunk
        while b"</message>" in data:
            stanza, _, data = data.partition(b"</message>")
            if (m := BODY.search(stanza)) is not None:
                got.append(int(m.group(1)))
    return data


async def _send_numbered(client: RawClient, to: str, numbers: range, kill: int,
                         doom: asyncio.Event) -> None:
    for n in numbers:
        await client.send(f"<message to='{to}' type='chat'><body>{n}</body></message>"
                          .encode())
        if n == kill:
            doom.set()
        await asyncio.sleep(0.01)


async def test_xep0198_5_sm_client_of_a_killed_cm_resumes_elsewhere_exactly_once_in_order(
    two_cms: tuple[Cluster, int, int],
) -> None:
    cluster, port_a, port_b = two_cms
    await _accounts(cluster, ["roam@localhost", "talk@localhost"])
    rx = RawClient("127.0.0.1", port_a)
    tx = RawClient("127.0.0.1", port_b)
    second = RawClient("127.0.0.1", port_b)
    try:
        sm_id = await raw_sm_login(rx, "roam@localhost", "pw", "r")
        await raw_sm_login(tx, "talk@localhost", "pw", "s")
        got: list[int] = []
        doom = asyncio.Event()
        sending = asyncio.create_task(
            _send_numbered(tx, "roam@localhost/r", range(N), N // 2, doom))
        # the client reads (and never acknowledges) until its connection manager dies
        reading = asyncio.create_task(_read_messages(rx, got, N - 1, timeout=60))
        await doom.wait()
        await asyncio.to_thread(cluster.kill, "cm-a")  # SIGKILL
        await sending
        await asyncio.wait_for(reading, 30)
        before = list(got)
        assert before == list(range(len(before))), before  # in order up to the kill
        assert len(before) < N, "every message arrived before the kill: nothing tested"
        assert await _acked(tx) == N  # every one stored: acknowledged to the sender
        # XEP-0198 §5: h = the stanzas the client handled (only these messages were sent
        # to it); it had read a few more than it handled: those come again, from the log
        handled = max(0, len(before) - UNHANDLED)
        await raw_auth(second, "roam@localhost", "pw")
        await second.send(f"<resume xmlns='{SM_NS}' previd='{sm_id}' h='{handled}'/>"
                          .encode())
        reply = await second.read_until(b"<resumed", timeout=45)  # hang guard
        assert b"<failed" not in reply, reply
        after: list[int] = []
        rest = reply[reply.index(b"<resumed"):]
        while b"</message>" in rest:
            stanza, _, rest = rest.partition(b"</message>")
            if (m := BODY.search(stanza)) is not None:
                after.append(int(m.group(1)))
        if N - 1 not in after:
            await _read_messages(second, after, N - 1, timeout=30)
        total = before[:handled] + after
        lost = N - len(set(total))
        duplicated = len(total) - len(set(total))
        print(f"cm SIGKILL, SM recipient: {len(before)} read before the kill, {handled} "
              f"handled, {len(after)} after the resume; lost {lost}, duplicated {duplicated}")
        assert total == list(range(N))  # every unhandled one, exactly once, in order
        metrics = await asyncio.to_thread(cluster.metrics, "cm-b")
        assert metric_value(metrics, "stanzad_cm_sm_resumed_from_log_total") == 1
    finally:
        for client in (rx, tx, second):
            await client.close()


async def test_non_sm_recipient_of_a_killed_cm_finds_the_messages_offline(
    two_cms: tuple[Cluster, int, int],
) -> None:
    cluster, port_a, port_b = two_cms
    await _accounts(cluster, ["plain@localhost", "talk2@localhost"])
    rx = RawClient("127.0.0.1", port_a)
    tx = RawClient("127.0.0.1", port_b)
    again = RawClient("127.0.0.1", port_b)
    try:
        await raw_login(rx, "plain@localhost", "pw", "r")
        await rx.send(b"<presence/>")
        await rx.read_until(b"<presence", timeout=15)
        await raw_sm_login(tx, "talk2@localhost", "pw", "s")
        got: list[int] = []
        doom = asyncio.Event()
        sending = asyncio.create_task(
            _send_numbered(tx, "plain@localhost/r", range(N), N // 3, doom))
        reading = asyncio.create_task(_read_messages(rx, got, N - 1, timeout=60))
        await doom.wait()
        await asyncio.to_thread(cluster.kill, "cm-a")
        await sending
        await asyncio.wait_for(reading, 30)
        assert await _acked(tx) == N
        assert len(got) < N, "every message arrived before the kill: nothing tested"
        # the next login: offline messages come with the initial presence (XEP-0160)
        await raw_login(again, "plain@localhost", "pw", "r2")
        await again.send(b"<presence/>")
        offline: list[int] = []
        missing = set(range(N)) - set(got)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 45
        while missing - set(offline) and loop.time() < deadline:
            await _read_messages(again, offline, max(missing), timeout=5)
            if missing - set(offline):  # drained later than the login: log in once more
                await again.close()
                again = RawClient("127.0.0.1", port_b)
                await raw_login(again, "plain@localhost", "pw", "r2")
                await again.send(b"<presence/>")
        lost = len(set(range(N)) - set(got) - set(offline))
        duplicated = len(got) + len(offline) - len(set(got + offline))
        print(f"cm SIGKILL, recipient without SM: {len(got)} read before the kill, "
              f"{len(offline)} from offline storage; lost {lost}, duplicated {duplicated}")
        assert lost == 0
    finally:
        for client in (rx, tx, again):
            await client.close()


async def test_sender_of_a_killed_cm_had_every_acknowledged_message_delivered(
    two_cms: tuple[Cluster, int, int],
) -> None:
    cluster, port_a, port_b = two_cms
    await _accounts(cluster, ["out@localhost", "in@localhost"])
    tx = RawClient("127.0.0.1", port_a)
    rx = RawClient("127.0.0.1", port_b)
    try:
        await raw_sm_login(tx, "out@localhost", "pw", "s")
        await raw_sm_login(rx, "in@localhost", "pw", "r")
        got: list[int] = []
        reading = asyncio.create_task(_read_messages(rx, got, N - 1, timeout=60))
        acked = 0
        for n in range(N):
            await tx.send(f"<message to='in@localhost/r' type='chat'><body>{n}</body>"
                          f"</message>".encode())
            if n % 10 == 9:
                acked = await _acked(tx)  # XEP-0198 §4: counts stored stanzas only
            if n == N // 2:
                await asyncio.to_thread(cluster.kill, "cm-a")
                break
            await asyncio.sleep(0.01)
        assert 0 < acked <= N // 2 + 1
        await eventually(lambda: acked - 1 in got, timeout=30, what="the last acknowledged")
        await asyncio.sleep(1.0)  # anything after it (stored, not yet acknowledged) too
        reading.cancel()
        print(f"cm SIGKILL, SM sender: {acked} acknowledged, {len(got)} delivered")
        assert got[:acked] == list(range(acked))  # every acknowledged one, once, in order
        assert got == list(range(len(got)))
    finally:
        for client in (rx, tx):
            await client.close()


ACKED = 20  # acknowledged by the SM client before its connection manager died


async def test_xep0198_5_sm_session_of_a_killed_cm_never_resumed_goes_to_offline_storage(
    two_cms: tuple[Cluster, int, int],
) -> None:
    """A resumable session whose connection manager is SIGKILLed and whose client does not
    come back within the resumption timeout: what the client had not acknowledged is taken
    from the session's log to offline storage (XEP-0198 §5, as for a session that times out
    on a live connection manager) and arrives at the next login exactly once, in order;
    what it had acknowledged does not come again."""
    cluster, port_a, port_b = two_cms
    await _accounts(cluster, ["gone@localhost", "talk3@localhost"])
    rx = RawClient("127.0.0.1", port_a)
    tx = RawClient("127.0.0.1", port_b)
    late = RawClient("127.0.0.1", port_b)
    again = RawClient("127.0.0.1", port_b)
    n = 60
    try:
        sm_id = await raw_sm_login(rx, "gone@localhost", "pw", "r",
                                   enable=b"<enable xmlns='urn:xmpp:sm:3' resume='true' "
                                   b"max='4'/>")
        await raw_sm_login(tx, "talk3@localhost", "pw", "s")
        got: list[int] = []
        for k in range(n):
            await tx.send(f"<message to='gone@localhost/r' type='chat'><body>{k}</body>"
                          f"</message>".encode())
        assert await _acked(tx) == n  # every one stored
        await _read_messages(rx, got, n - 1)
        assert got == list(range(n))
        # XEP-0198 §4: the first ACKED acknowledged (only these messages were sent to it);
        # the server's answer to <r/> comes once what it published before is stored
        await rx.send(f"<a xmlns='{SM_NS}' h='{ACKED}'/><r xmlns='{SM_NS}'/>".encode())
        await rx.read_until(b"<a ", timeout=15)
        await asyncio.to_thread(cluster.kill, "cm-a")  # SIGKILL; the client never resumes
        metric = "stanzad_cm_sm_swept_total"
        await eventually(lambda: metric_value(cluster.metrics("cm-b"), metric) == 1,
                         timeout=60, what="the session swept after its timeout")
        # the session is over: a resume now finds nothing (XEP-0198 §5)
        await raw_auth(late, "gone@localhost", "pw")
        await late.send(f"<resume xmlns='{SM_NS}' previd='{sm_id}' h='{ACKED}'/>".encode())
        reply = await late.read_until(b"<failed", timeout=45)  # hang guard
        assert b"<resumed" not in reply, reply
        # the next login: offline messages come with the initial presence (XEP-0160)
        await raw_login(again, "gone@localhost", "pw", "r2")
        await again.send(b"<presence/>")
        offline: list[int] = []
        await _read_messages(again, offline, n - 1, timeout=30)
        rest = await _read_messages(again, offline, n, timeout=2)  # nothing more comes
        lost = len(set(range(ACKED, n)) - set(offline))
        duplicated = len(offline) - len(set(offline))
        print(f"cm SIGKILL, SM client never resumed: {ACKED} acknowledged, "
              f"{len(offline)} from offline storage; lost {lost}, duplicated {duplicated}")
        assert offline == list(range(ACKED, n)), (offline, rest)
    finally:
        for client in (rx, tx, late, again):
            await client.close()


async def test_backlog_of_a_restarted_cm_is_not_dropped_behind_a_newer_session(
    slow_beat_cms: tuple[Cluster, int, int],
) -> None:
    """RFC 6120 §10.1 and XEP-0198 §5 across a connection manager killed and started again
    with the same id while deliveries to its session waited in its subject, the client
    having bound the same full JID on another one meanwhile (as the long run's receivers
    do).  The waiting deliveries are older than the ones the new session got live; rerouted
    to it, its replay check dropped them as not newer (issue 20's long-run losses).  They
    are the old session's unacknowledged stanzas: each message arrives exactly once, live
    or from offline storage, each in order."""
    cluster, port_a, port_b = slow_beat_cms
    await _accounts(cluster, ["back@localhost", "fro@localhost"])
    rx = RawClient("127.0.0.1", port_a)
    tx = RawClient("127.0.0.1", port_b)
    rx2 = RawClient("127.0.0.1", port_b)
    again = RawClient("127.0.0.1", port_b)
    to = "back@localhost/r"

    async def send(numbers: range) -> None:
        await tx.send(b"".join(f"<message to='{to}' type='chat'><body>{k}</body></message>"
                               .encode() for k in numbers))

    try:
        await raw_sm_login(rx, "back@localhost", "pw", "r")
        await raw_sm_login(tx, "fro@localhost", "pw", "s")
        live: list[int] = []
        await send(range(10))
        await _read_messages(rx, live, 9)
        # XEP-0198 §4: all ten acknowledged, in the log once the answer to <r/> comes
        await rx.send(f"<a xmlns='{SM_NS}' h='10'/><r xmlns='{SM_NS}'/>".encode())
        await rx.read_until(b"<a ", timeout=15)
        # cm-a stops taking its deliveries (its heartbeat outlives this: no drain by cm-b);
        # 10-29 wait in its subject
        cluster.procs["cm-a"].send_signal(signal.SIGSTOP)
        await send(range(10, 30))
        assert await _acked(tx) == 30
        await eventually(lambda: _routed(cluster, "delivered") >= 30, timeout=30,
                         what="10-29 routed to cm-a")
        # the client binds the same full JID on cm-b and gets the newer ones there
        await raw_sm_login(rx2, "back@localhost", "pw", "r")
        await rx2.send(b"<presence/>")  # available: what goes to the bare JID comes here
        later: list[int] = []
        await send(range(30, 50))
        await _read_messages(rx2, later, 49, timeout=30)
        assert 49 in later, later
        # cm-a SIGKILLed and started again with the same id: its previous run's backlog
        await asyncio.to_thread(cluster.kill, "cm-a")
        cluster.start_cm("cm-a", port_a, **{**cluster.cm_env["cm-a"], **FAST})
        await eventually(lambda: metric_value(cluster.metrics("cm-a"),
                                              "stanzad_cm_sm_swept_total") == 1,
                         timeout=30, what="the old session swept")
        await eventually(lambda: _routed(cluster, "stored") >= 20, timeout=20,
                         what="10-29 stored offline")
        late = await _read_messages(rx2, later, 50, timeout=1)  # nothing more comes live
        await raw_login(again, "back@localhost", "pw", "r2")
        await again.send(b"<presence/>")  # offline messages come (XEP-0160)
        offline: list[int] = []
        await _read_messages(again, offline, 29, timeout=15)  # hang guard
        total = live + later + offline
        lost = sorted(set(range(50)) - set(total))
        print(f"cm restarted with a backlog: {len(live)} + {len(later)} live, "
              f"{len(offline)} from offline storage; lost {lost}, duplicated "
              f"{len(total) - len(set(total))}")
        assert not lost
        assert sorted(total) == list(range(50))  # exactly once
        assert later == sorted(later) and offline == sorted(offline), (later, offline, late)
    finally:
        for client in (rx, tx, rx2, again):
            await client.close()



def _routed(cluster: Cluster, outcome: str) -> float:
    """Messages the router handled with ``outcome`` (delivered, stored)."""
    return metric_value(cluster.metrics("router-1"), "stanzad_router_stanzas_total",
                        kind="message", outcome=outcome)
