"""Edge limits on a real connection manager (RFC 6120 §13.12, XEP-0205, XEP-0199).

Each test drives 'cm-tight' or 'cm-open' (tests/security/conftest.py) over real sockets and
checks the exact reaction and the metric that counts it.
"""

from __future__ import annotations

import asyncio
import time

from shared.store import keys
from tests.conftest import Users
from tests.support.cluster import Cluster, metric_value
from tests.support.xmpp import Client, RawClient, new_source, raw_login

HOST = "127.0.0.1"


def _metric(cluster: Cluster, cm: str, name: str, **labels: str) -> float:
    return metric_value(cluster.metrics(cm), name, **labels)


async def test_rfc6120_13_12_auth_timeout_closes_with_connection_timeout(
    cluster: Cluster, tight_cm: int
) -> None:
    raw = RawClient(HOST, tight_cm, source=new_source())
    try:
        await raw.open()
        await raw.send(raw.header())
        started = time.monotonic()
        await raw.expect_stream_error("connection-timeout", timeout=30)  # a hang guard
        print(f"closed {time.monotonic() - started:.2f} s after the header "
              "(STANZAD_AUTH_TIMEOUT_S=2)")
    finally:
        await raw.close()
    assert _metric(cluster, "cm-tight", "stanzad_cm_auth_timeouts_total") >= 1


async def test_rfc6120_13_12_unauthenticated_connections_per_address_evict_the_oldest(
    cluster: Cluster, tight_cm: int, users: Users
) -> None:
    source = new_source()
    held = [RawClient(HOST, tight_cm, source=source) for _ in range(3)]
    extra = RawClient(HOST, tight_cm, source=source)
    other = RawClient(HOST, tight_cm, source=new_source())
    before = _metric(cluster, "cm-tight", "stanzad_cm_connections_refused_total",
                     reason="per_ip")
    try:
        for raw in held:  # STANZAD_MAX_CONNECTIONS_PER_IP=3
            await raw.open()
            await raw.send(raw.header())
            await raw.read_until(b"</stream:features>")
        await extra.open()  # the fourth gets in, the oldest goes
        await extra.send(extra.header())
        assert b"<stream:features>" in await extra.read_until(b"</stream:features>")
        await held[0].expect_stream_error("policy-violation")
        await other.open()  # another address is not affected
        await other.send(other.header())
        assert b"<stream:features>" in await other.read_until(b"</stream:features>")
        # authenticated sessions are not counted per address: four log in from another one
        # (cm-tight's 2 s to authenticate leave no time to watch the idle ones longer)
        logged_from = new_source()
        for jid, pw in [await users.create() for _ in range(4)]:
            raw = RawClient(HOST, tight_cm, source=logged_from)
            held.append(raw)
            assert b"<jid>" in await raw_login(raw, jid, pw)
        for raw in held[-4:]:  # all logged in, all still served
            await raw.send(b"<iq type='get' id='alive' to='localhost'>"
                           b"<ping xmlns='urn:xmpp:ping'/></iq>")
            assert b'id="alive"' in await raw.read_until(b'id="alive"')
    finally:
        for raw in [*held, extra, other]:
            await raw.close()
    after = _metric(cluster, "cm-tight", "stanzad_cm_connections_refused_total", reason="per_ip")
    assert after - before >= 1


async def test_rfc6120_7_7_sessions_per_account_is_resource_constraint(
    cluster: Cluster, tight_cm: int, users: Users
) -> None:
    jid, pw = await users.create()
    clients = [RawClient(HOST, tight_cm, source=new_source()) for _ in range(3)]
    try:
        assert b"<jid>" in await raw_login(clients[0], jid, pw, resource="r0")
        assert b"<jid>" in await raw_login(clients[1], jid, pw, resource="r1")
        third = await raw_login(clients[2], jid, pw, resource="r2")
        assert b'type="error"' in third and b"<resource-constraint" in third
        assert sorted(await users.redis.hkeys(keys.sessions(jid))) == [b"r0", b"r1"]
    finally:
        for raw in clients:
            await raw.close()
    assert _metric(cluster, "cm-tight", "stanzad_cm_session_limit_total") >= 1


async def _auth(port: int, source: str, jid: str, password: str) -> bytes:
    raw = RawClient(HOST, port, source=source)
    try:
        await raw.open()
        await raw.starttls()
        return await raw.auth_plain(jid, password)
    finally:
        await raw.close()


async def test_xep0205_failures_of_one_account_lock_it_progressively_not_the_address(
    cluster: Cluster, tight_cm: int, users: Users
) -> None:
    """STANZAD_AUTH_PAIR_FREE_FAILURES=3, then locks of 1 s, 2 s (the longest) for the pair;
    other accounts from the same address log in at once."""
    (victim, pw), (other, other_pw) = await users.create(), await users.create()
    source = new_source()
    replies = [await _auth(tight_cm, source, victim, "wrong") for _ in range(4)]
    assert all(b"<not-authorized/>" in r for r in replies), replies
    await asyncio.sleep(0.2)  # the failure is counted in Redis after the reply
    locked = await _auth(tight_cm, source, victim, pw)  # even the right password waits
    assert b"<temporary-auth-failure/>" in locked and b"try again in" in locked
    assert b"<success" in await _auth(tight_cm, source, other, other_pw)  # not the address
    assert b"<success" in await _auth(tight_cm, new_source(), victim, pw)  # not the account
    await asyncio.sleep(2.2)  # STANZAD_AUTH_PAIR_MAX_DELAY_S=2
    assert b"<success" in await _auth(tight_cm, source, victim, pw)
    assert _metric(cluster, "cm-tight", "stanzad_cm_auth_throttled_total", scope="pair") >= 1


async def test_xep0205_failures_against_one_account_from_many_addresses_lock_it_briefly(
    cluster: Cluster, tight_cm: int, users: Users
) -> None:
    victim, pw = await users.create()
    other, other_pw = await users.create()
    # STANZAD_AUTH_ACCOUNT_FREE_FAILURES=4, then 5 with a lock, each from a new address;
    # half on the default connection manager: the counters are in Redis, shared by every pod
    for port in (tight_cm, cluster.c2s_port, tight_cm, cluster.c2s_port, tight_cm):
        assert b"<not-authorized/>" in await _auth(port, new_source(), victim, "guess")
    await asyncio.sleep(0.2)
    source = new_source()
    assert b"<temporary-auth-failure/>" in await _auth(tight_cm, source, victim, pw)
    raw = RawClient(HOST, tight_cm, source=source)
    try:
        assert b"<jid>" in await raw_login(raw, other, other_pw)  # other accounts are fine
    finally:
        await raw.close()
    await asyncio.sleep(2.2)  # STANZAD_AUTH_ACCOUNT_MAX_DELAY_S=2
    assert b"<success" in await _auth(tight_cm, source, victim, pw)
    assert _metric(cluster, "cm-tight", "stanzad_cm_auth_throttled_total", scope="account") >= 1


async def test_xep0205_an_address_failing_faster_than_humans_is_blocked_briefly(
    cluster: Cluster, tight_cm: int, users: Users
) -> None:
    """STANZAD_AUTH_BLOCK_FAILURES_PER_MIN=40 on cm-tight: 40 failures within the minute
    (each against another account: no account lock) block the address, with a metric and
    a log line naming it."""
    jid, pw = await users.create()
    source = new_source()
    before = _metric(cluster, "cm-tight", "stanzad_cm_auth_blocked_addresses_total")
    for i in range(40):
        reply = await _auth(tight_cm, source, f"nobody{i}@localhost", "guess")
        assert b"<not-authorized/>" in reply
    await asyncio.sleep(0.2)
    assert b"<temporary-auth-failure/>" in await _auth(tight_cm, source, jid, pw)
    assert b"<success" in await _auth(tight_cm, new_source(), jid, pw)
    assert _metric(cluster, "cm-tight", "stanzad_cm_auth_blocked_addresses_total") == before + 1
    assert f"blocked logins from {source} for 60 s" in cluster.log("cm-tight")
    assert _metric(cluster, "cm-tight", "stanzad_cm_auth_answers_delayed_total") >= 40


async def _ping_round(raw: RawClient, n: int, pad: int) -> float:
    """Send n server pings (each padded to about `pad` bytes) at once; time all answers."""
    started = time.monotonic()
    filler = "x" * max(0, pad - 80)
    await raw.send(b"".join(
        f"<iq type='get' id='p{i}-{filler}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        .encode()
        for i in range(n)
    ))
    await raw.read_until(f"p{n - 1}-{filler}".encode(), timeout=20)
    return time.monotonic() - started


async def test_rfc6120_13_12_inbound_byte_rate_is_backpressure(
    cluster: Cluster, tight_cm: int, users: Users
) -> None:
    jid, pw = await users.create()
    raw = RawClient(HOST, tight_cm, source=new_source())
    try:
        await raw_login(raw, jid, pw)
        await asyncio.sleep(1.0)  # refill the burst the login used
        before = _metric(cluster, "cm-tight", "stanzad_cm_rate_limited_total", limit="bytes")
        # 8 stanzas of 1.5 KiB = 12 KiB at 4 KiB/s with a 4 KiB burst: about 2 s
        elapsed = await _ping_round(raw, 8, 1536)
        print(f"12 KiB at 4 KiB/s: {elapsed:.2f} s")
        after = _metric(cluster, "cm-tight", "stanzad_cm_rate_limited_total", limit="bytes")
        assert after > before
    finally:
        await raw.close()


async def test_rfc6120_13_12_stanza_rate_per_session(
    cluster: Cluster, tight_cm: int, users: Users
) -> None:
    jid, pw = await users.create()
    raw = RawClient(HOST, tight_cm, source=new_source())
    try:
        await raw_login(raw, jid, pw)
        await asyncio.sleep(1.0)
        before = _metric(cluster, "cm-tight", "stanzad_cm_rate_limited_total", limit="stanzas")
        # 40 small stanzas at 20/s with a burst of 10: about 1.5 s
        elapsed = await _ping_round(raw, 40, 0)
        print(f"40 stanzas at 20/s: {elapsed:.2f} s")
        after = _metric(cluster, "cm-tight", "stanzad_cm_rate_limited_total", limit="stanzas")
        assert after > before
    finally:
        await raw.close()


async def test_xep0199_idle_session_is_pinged_and_a_silent_one_is_dropped(
    cluster: Cluster, tight_cm: int, users: Users
) -> None:
    jid, pw = await users.create()
    raw = RawClient(HOST, tight_cm, source=new_source())
    try:
        bound = await raw_login(raw, jid, pw, resource="idle")
        assert b"<jid>" in bound
        ping = await raw.read_until(b"</iq>", timeout=4)  # interval 1 s
        assert b'<ping xmlns="urn:xmpp:ping"/>' in ping and b'type="get"' in ping
        ping_id = ping.split(b'id="', 1)[1].split(b'"', 1)[0]
        await raw.send(b"<iq type='result' id='" + ping_id + b"' to='localhost'/>")
        # answered: the next ping comes, the stream stays open; now stay silent
        assert b"urn:xmpp:ping" in await raw.read_until(b"</iq>", timeout=4)
        started = time.monotonic()
        await raw.expect_stream_error("connection-timeout", timeout=30)  # a hang guard
        print(f"dropped {time.monotonic() - started:.2f} s after the last answered ping "
              "(interval 1 s + timeout 1 s)")
    finally:
        await raw.close()
    assert _metric(cluster, "cm-tight", "stanzad_cm_dead_peers_total") >= 1
    assert _metric(cluster, "cm-tight", "stanzad_cm_keepalive_pings_total") >= 2


async def test_rfc6120_13_12_client_that_does_not_read_is_dropped_and_others_go_on(
    cluster: Cluster, open_cm: int, users: Users
) -> None:
    reader_jid, reader_pw = await users.create()
    sender_jid, sender_pw = await users.create()
    reader = RawClient(HOST, open_cm, source=new_source(), rcvbuf=4096)
    sender = RawClient(HOST, open_cm, source=new_source())
    try:
        await raw_login(reader, reader_jid, reader_pw, resource="slow")
        await raw_login(sender, sender_jid, sender_pw)
        body = "z" * 200_000
        flood = b"".join(
            f"<message to='{reader_jid}/slow' type='chat' id='m{i}'><body>{body}</body></message>"
            .encode()
            # 6 MB toward a client that reads nothing: more than the kernel's send buffer
            # (net.ipv4.tcp_wmem allows it 4 MiB) plus the 64 KiB STANZAD_MAX_WRITE_BUFFER_BYTES
            for i in range(30)
        )
        await sender.send(flood)
        deadline = time.monotonic() + 20
        while _metric(cluster, "cm-open", "stanzad_cm_slow_consumers_total") < 1:
            assert time.monotonic() < deadline, "the slow reader was never dropped"
            await asyncio.sleep(0.2)
        # the stream error is the last thing the slow reader gets, once it reads
        data = await reader.read_all(timeout=15)
        assert b'<policy-violation xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>' in data[-400:]
        # the sender's session and the pod are unaffected
        await sender.send(b"<iq type='get' id='alive' to='localhost'>"
                          b"<ping xmlns='urn:xmpp:ping'/></iq>")
        assert b'id="alive"' in await sender.read_until(b'id="alive"', timeout=10)
        for _ in range(50):  # unbound once the connection is gone
            if await users.redis.hget(keys.sessions(reader_jid), "slow") is None:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the dropped session is still bound")
    finally:
        await reader.close()
        await sender.close()


async def test_normal_client_still_logs_in_on_the_tight_connection_manager(
    tight_cm: int, users: Users
) -> None:
    jid, pw = await users.create()
    client = Client(jid + "/normal", pw, source=new_source())
    await client.login(HOST, tight_cm)
    assert client.used_mech == "SCRAM-SHA-256" and str(client.boundjid) == jid + "/normal"
    await client.logout()
