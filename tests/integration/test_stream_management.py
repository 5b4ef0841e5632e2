"""XEP-0198 Stream Management against the running cluster: acks, resumption after a cut
connection, and what happens to a session that is not resumed."""

from __future__ import annotations

import asyncio
import re
import signal

import pytest
from slixmpp.exceptions import IqError

from devtools.localservers import free_port
from shared.store import keys
from tests.conftest import Users
from tests.support.cluster import Cluster, metric_value
from tests.support.xmpp import (
    Client,
    RawClient,
    eventually,
    raw_auth,
    raw_login,
    raw_sm_login,
)

SM_NS = "urn:xmpp:sm:3"
BODY = re.compile(rb"<body>(\d+)</body>")


async def sm_session(cluster: Cluster, jid: str, pw: str, resource: str,
                     enable: bytes = b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
                     ) -> tuple[RawClient, str]:
    """A raw session with stream management enabled; returns it and the resumption id."""
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    return raw, await raw_sm_login(raw, jid, pw, resource, enable)


async def bodies_until(raw: RawClient, last: int, seen: bytes = b"") -> tuple[list[int], bytes]:
    """Read until message `last` arrived; the numbers of every message read, in order."""
    data = seen
    needle = f"<body>{last}</body>".encode()
    if needle not in data:
        data += await raw.read_until(needle, timeout=15)
    return [int(n) for n in BODY.findall(data)], data


async def more(raw: RawClient, data: bytes, needle: bytes) -> bytes:
    """`data` and what follows it until `needle` is in the whole."""
    if needle in data:
        return data
    return data + await raw.read_until(needle, timeout=15)


def cut(raw: RawClient) -> None:
    """The TCP connection breaks: no </stream:stream>, no TLS close_notify."""
    assert raw.writer is not None
    raw.writer.transport.abort()


async def sender(cluster: Cluster, users: Users) -> Client:
    jid, pw = await users.create()
    client = Client(f"{jid}/sender", pw)
    await client.login("127.0.0.1", cluster.c2s_port)
    return client


def send_numbered(client: Client, to: str, numbers: range) -> None:
    for n in numbers:
        client.send_message(mto=to, mbody=str(n), mtype="chat")


async def test_xep0198_3_4_enabled_and_acks_with_the_servers_own_stanzas_counted(
    cluster: Cluster, users: Users
) -> None:
    jid, pw = await users.create()
    raw, _ = await sm_session(cluster, jid, pw, "acks")
    try:
        # a server IQ answer is a stanza the server writes: counted (§4)
        await raw.send(b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>"
                       b"<r xmlns='urn:xmpp:sm:3'/>")
        data = await raw.read_until(b"<a xmlns=")
        data = await more(raw, data, b'"/>')
        assert b'id="p1"' in data
        assert b'<a xmlns="urn:xmpp:sm:3" h="1"/>' in data  # it handled our one stanza
        await raw.send(b"<enable xmlns='urn:xmpp:sm:3'/>")
        assert b"<unexpected-request" in await raw.read_until(b"</failed>")  # §3: twice
        await raw.send(b"<a xmlns='urn:xmpp:sm:3' h='1'/>")  # the ping result: fine
        await raw.send(b"<a xmlns='urn:xmpp:sm:3' h='7'/>")  # more than was sent
        data = await raw.expect_stream_error("undefined-condition")
        assert b"<handled-count-too-high" in data
    finally:
        await raw.close()


async def test_xep0198_4_server_asks_for_acks_by_count(cluster: Cluster, users: Users) -> None:
    jid, pw = await users.create()
    raw, _ = await sm_session(cluster, jid, pw, "asked")
    chatter = await sender(cluster, users)
    try:
        send_numbered(chatter, f"{jid}/asked", range(10))
        data = await raw.read_until(b"<body>9</body>")
        data = await more(raw, data, b'<r xmlns="urn:xmpp:sm:3"/>')
        assert data.count(b"<message") == 10
        await raw.send(b"<a xmlns='urn:xmpp:sm:3' h='10'/>")  # everything: the stream goes on
        await raw.send(b"<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert b'type="result"' in await raw.read_until(b'id="p2"')
    finally:
        await chatter.logout()
        await raw.close()


async def test_xep0198_5_numbered_messages_arrive_exactly_once_in_order_after_resume(
    cluster: Cluster, users: Users
) -> None:
    jid, pw = await users.create()
    raw, sm_id = await sm_session(cluster, jid, pw, "phone")
    chatter = await sender(cluster, users)
    second = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        send_numbered(chatter, f"{jid}/phone", range(0, 20))
        got, _ = await bodies_until(raw, 19)
        assert got == list(range(20))
        handled = 12  # the client processed 12 of them before its connection broke
        cut(raw)
        send_numbered(chatter, f"{jid}/phone", range(20, 40))  # held while detached
        await asyncio.sleep(0.5)
        sessions = await users.redis.hgetall(keys.sessions(jid))
        assert b"phone" in sessions  # still bound while detached
        await raw_auth(second, jid, pw)
        await second.send(f"<resume xmlns='{SM_NS}' previd='{sm_id}' h='{handled}'/>".encode())
        data = await second.read_until(b"<resumed")
        resumed, data = await bodies_until(second, 39, data)
        assert b'h="0"' in data.split(b"<resumed", 1)[1][:200]  # we sent it nothing
        assert resumed == list(range(handled, 40))  # exactly once, in order
        # the resumed stream is the session: it sends and is answered as before
        await second.send(b"<iq type='get' id='p3'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert b'type="result"' in await second.read_until(b'id="p3"')
        send_numbered(chatter, f"{jid}/phone", range(40, 41))
        assert (await bodies_until(second, 40))[0] == [40]
        metrics = await asyncio.to_thread(cluster.metrics, "cm-1")
        assert 'stanzad_cm_sm_resumptions_total{result="same_pod"}' in metrics
    finally:
        await chatter.logout()
        await raw.close()
        await second.close()


async def test_xep0198_5_resume_before_the_server_noticed_the_break(
    cluster: Cluster, users: Users
) -> None:
    """The new connection comes first: the old one is cut and its queue taken over."""
    jid, pw = await users.create()
    old, sm_id = await sm_session(cluster, jid, pw, "tablet")
    chatter = await sender(cluster, users)
    new = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        send_numbered(chatter, f"{jid}/tablet", range(5))
        await bodies_until(old, 4)
        await raw_auth(new, jid, pw)
        await new.send(f"<resume xmlns='{SM_NS}' previd='{sm_id}' h='3'/>".encode())
        got, _ = await bodies_until(new, 4, await new.read_until(b"<resumed"))
        assert got == [3, 4]
        assert (await old.read_all()).count(b"<message") == 0  # cut without a word
        send_numbered(chatter, f"{jid}/tablet", range(5, 6))
        assert (await bodies_until(new, 5))[0] == [5]
    finally:
        await chatter.logout()
        await old.close()
        await new.close()


async def test_xep0198_5_unknown_previd_or_other_account_is_item_not_found(
    cluster: Cluster, users: Users
) -> None:
    jid, pw = await users.create()
    other_jid, other_pw = await users.create()
    owner, sm_id = await sm_session(cluster, jid, pw, "mine")
    thief = RawClient("127.0.0.1", cluster.c2s_port)
    stranger = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_auth(stranger, jid, pw)
        await stranger.send(f"<resume xmlns='{SM_NS}' previd='nope' h='0'/>".encode())
        assert b"<item-not-found" in await stranger.read_until(b"</failed>")
        await raw_auth(thief, other_jid, other_pw)
        await thief.send(f"<resume xmlns='{SM_NS}' previd='{sm_id}' h='0'/>".encode())
        assert b"<item-not-found" in await thief.read_until(b"</failed>")
        metrics = await asyncio.to_thread(cluster.metrics, "cm-1")
        assert 'stanzad_cm_sm_resumptions_total{result="not_found"}' in metrics
        # the owner's session is untouched
        await owner.send(b"<iq type='get' id='p4'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert b'type="result"' in await owner.read_until(b'id="p4"')
    finally:
        await owner.close()
        await thief.close()
        await stranger.close()


async def test_xep0198_5_at_timeout_unacked_messages_go_offline_and_iqs_bounce(
    cluster: Cluster, users: Users
) -> None:
    jid, pw = await users.create()
    # 'max' is honoured: one second of detachment
    raw, sm_id = await sm_session(
        cluster, jid, pw, "gone", b"<enable xmlns='urn:xmpp:sm:3' resume='true' max='1'/>"
    )
    chatter = await sender(cluster, users)
    later = Client(f"{jid}/later", pw)
    try:
        send_numbered(chatter, f"{jid}/gone", range(6))
        await bodies_until(raw, 5)
        await raw.send(b"<a xmlns='urn:xmpp:sm:3' h='2'/>")  # 0 and 1 acknowledged
        await asyncio.sleep(0.3)
        cut(raw)
        send_numbered(chatter, f"{jid}/gone", range(6, 8))
        # an IQ request held for the detached session is answered with an error at timeout
        ping = asyncio.ensure_future(
            chatter.plugin["xep_0199"].send_ping(f"{jid}/gone", timeout=15)
        )
        with pytest.raises(IqError) as bounced:
            await asyncio.wait_for(ping, 20)
        assert bounced.value.condition == "service-unavailable"

        async def unbound() -> bool:
            return b"gone" not in await users.redis.hgetall(keys.sessions(jid))

        await eventually(unbound, timeout=15, what="the detached session timed out")
        await later.login("127.0.0.1", cluster.c2s_port)  # initial presence: offline messages
        got = [int((await asyncio.wait_for(later.messages.get(), 10))["body"])
               for _ in range(6)]
        assert got == [2, 3, 4, 5, 6, 7]  # exactly the unacknowledged, in order
        await asyncio.sleep(0.5)
        assert later.messages.empty()
        stored = await users.redis.llen(keys.offline(jid))
        assert stored == 0
        resume = RawClient("127.0.0.1", cluster.c2s_port)
        try:
            await raw_auth(resume, jid, pw)
            await resume.send(f"<resume xmlns='{SM_NS}' previd='{sm_id}' h='2'/>".encode())
            assert b"<item-not-found" in await resume.read_until(b"</failed>")
        finally:
            await resume.close()
    finally:
        await chatter.logout()
        await later.logout()
        await raw.close()


async def test_xep0198_5_slixmpp_resumes_and_gets_every_message_once_in_order(
    cluster: Cluster, users: Users
) -> None:
    """A real client's view: slixmpp's XEP-0198 plugin, its TCP connection cut, reconnecting."""
    jid, pw = await users.create()
    phone = Client(f"{jid}/slix", pw)
    phone.register_plugin("xep_0198")
    enabled = asyncio.Event()
    resumed = asyncio.Event()
    phone.add_event_handler("sm_enabled", lambda *_: enabled.set())
    phone.add_event_handler("session_resumed", lambda *_: resumed.set())
    chatter = await sender(cluster, users)
    try:
        await phone.login("127.0.0.1", cluster.c2s_port)
        await asyncio.wait_for(enabled.wait(), 10)
        send_numbered(chatter, f"{jid}/slix", range(10))
        got = [int((await asyncio.wait_for(phone.messages.get(), 10))["body"])
               for _ in range(10)]
        assert phone.transport is not None
        phone.transport.abort()  # no </stream:stream>
        await asyncio.wait_for(phone.disconnected, 10)
        send_numbered(chatter, f"{jid}/slix", range(10, 20))
        await asyncio.sleep(0.3)
        phone.connect("127.0.0.1", cluster.c2s_port)
        await asyncio.wait_for(resumed.wait(), 15)
        got += [int((await asyncio.wait_for(phone.messages.get(), 10))["body"])
                for _ in range(10)]
        assert got == list(range(20))
        await asyncio.sleep(0.5)
        assert phone.messages.empty()  # nothing twice
    finally:
        await chatter.logout()
        await phone.logout()


@pytest.fixture(scope="module")
def small_queue_port(cluster: Cluster) -> int:
    """A second connection manager whose sessions may hold 5 unacknowledged stanzas, and
    that asks for acks by time only (after 0.5 s; by count only after 50)."""
    return cluster.start_cm("cm-sm-small", STANZAD_SM_MAX_UNACKED="5",
                            STANZAD_SM_ACK_EVERY="50", STANZAD_SM_ACK_AFTER_S="0.5")


async def test_xep0198_4_server_asks_for_acks_by_time(
    cluster: Cluster, users: Users, small_queue_port: int
) -> None:
    """STANZAD_SM_ACK_AFTER_S: one stanza unacknowledged (far below STANZAD_SM_ACK_EVERY)
    still gets an <r/> once it has waited that long."""
    jid, pw = await users.create()
    raw = RawClient("127.0.0.1", small_queue_port)
    chatter = await sender(cluster, users)
    try:
        await raw_sm_login(raw, jid, pw, "patient")
        send_numbered(chatter, f"{jid}/patient", range(1))
        data = await raw.read_until(b'<r xmlns="urn:xmpp:sm:3"/>', timeout=15)
        assert data.count(b"<message") == 1 and b"<body>0</body>" in data
        await raw.send(b"<a xmlns='urn:xmpp:sm:3' h='1'/>")
        await raw.send(b"<iq type='get' id='p3'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert b'type="result"' in await raw.read_until(b'id="p3"')
    finally:
        await chatter.logout()
        await raw.close()


async def test_xep0198_unacked_queue_is_bounded_policy_violation_then_offline(
    cluster: Cluster, users: Users, small_queue_port: int
) -> None:
    jid, pw = await users.create()
    raw = RawClient("127.0.0.1", small_queue_port)
    chatter = await sender(cluster, users)
    later = Client(f"{jid}/later", pw)
    try:
        assert b"<jid>" in await raw_login(raw, jid, pw, resource="greedy")
        await raw.send(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        await raw.read_until(b"<enabled")
        send_numbered(chatter, f"{jid}/greedy", range(8))  # never acknowledged
        data = await raw.expect_stream_error("policy-violation", timeout=15)
        assert b"too many unacknowledged stanzas" in data

        async def unbound() -> bool:
            return b"greedy" not in await users.redis.hgetall(keys.sessions(jid))

        await eventually(unbound, timeout=15, what="the session ended")

        async def stored() -> bool:  # the next login's flush (XEP-0160) takes what is stored
            return await users.offline.count(jid) == 8

        await eventually(stored, timeout=15, what="the unacknowledged stored offline")
        await later.login("127.0.0.1", cluster.c2s_port)
        got = [int((await asyncio.wait_for(later.messages.get(), 10))["body"])
               for _ in range(8)]
        assert got == list(range(8))  # none lost: the unacknowledged went to offline storage
    finally:
        await chatter.logout()
        await later.logout()
        await raw.close()


@pytest.fixture(scope="module")
def other_cm_port(cluster: Cluster) -> int:
    """Another connection manager of the same cluster, for resumption across pods; it names
    its own address in <enabled location/> (STANZAD_SM_LOCATION)."""
    port = free_port()
    return cluster.start_cm("cm-sm-other", port, STANZAD_SM_LOCATION=f"127.0.0.1:{port}")


async def enabled_element(raw: RawClient, jid: str, pw: str, resource: str) -> bytes:
    assert b"<jid>" in await raw_login(raw, jid, pw, resource=resource)
    await raw.send(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
    data = await raw.read_until(b"<enabled")
    data = data[data.index(b"<enabled"):]
    return data if b"/>" in data else data + await raw.read_until(b"/>")


async def test_xep0198_5_enabled_location_is_the_setting_and_absent_by_default(
    cluster: Cluster, users: Users, other_cm_port: int
) -> None:
    """§5: a server MAY name where it prefers the <resume/> (<enabled location/>); the pod
    with STANZAD_SM_LOCATION names it, the default pod sends no attribute."""
    jid, pw = await users.create()
    located = RawClient("127.0.0.1", other_cm_port)
    plain = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        assert f'location="127.0.0.1:{other_cm_port}"'.encode() in await enabled_element(
            located, jid, pw, "located"
        )
        assert b"location" not in await enabled_element(plain, jid, pw, "anywhere")
    finally:
        await located.close()
        await plain.close()


async def test_xep0198_5_resume_on_the_other_connection_manager_exactly_once_in_order(
    cluster: Cluster, users: Users, other_cm_port: int
) -> None:
    """Issue 16: numbered messages to a client whose TCP is cut arrive exactly once and in
    order after it resumes on the *other* connection manager, which then owns the session
    (the session table names it; no presence flap)."""
    jid, pw = await users.create()
    raw, sm_id = await sm_session(cluster, jid, pw, "roaming")
    chatter = await sender(cluster, users)
    second = RawClient("127.0.0.1", other_cm_port)
    try:
        await raw.send(b"<presence/>")
        await raw.read_until(b"<presence")  # its own, reflected: the first stanza counted
        send_numbered(chatter, f"{jid}/roaming", range(0, 20))
        got, _ = await bodies_until(raw, 19)
        assert got == list(range(20))
        facts = await users.redis.hgetall(keys.sm_facts(jid, sm_id))
        assert facts[b"owner"].startswith(b"cm-1 ")  # written at <enable/>
        cut(raw)

        async def detached() -> bool:
            f = await users.redis.hgetall(keys.sm_facts(jid, sm_id))
            return f.get(b"deadline", b"0") != b"0"

        await eventually(detached, timeout=15, what="the facts of the detached session")
        send_numbered(chatter, f"{jid}/roaming", range(20, 40))  # held on cm-1
        await asyncio.sleep(0.5)
        before = (await users.redis.hgetall(keys.sessions(jid)))[b"roaming"].split(b" ")
        assert before[0] == b"cm-1"
        await raw_auth(second, jid, pw)
        handled = 12  # the client processed 12 messages before its connection broke
        await second.send(
            f"<resume xmlns='{SM_NS}' previd='{sm_id}' h='{handled + 1}'/>".encode()
        )
        data = await second.read_until(b"<resumed")
        resumed, data = await bodies_until(second, 39, data)
        assert resumed == list(range(handled, 40))  # exactly once, in order
        after = (await users.redis.hgetall(keys.sessions(jid)))[b"roaming"].split(b" ")
        assert after[0] == b"cm-sm-other"
        assert after[1:] == before[1:]  # same session id, priority, availability
        # new messages follow the session to its new pod, once each
        send_numbered(chatter, f"{jid}/roaming", range(40, 45))
        got, data = await bodies_until(second, 44)
        assert got == list(range(40, 45))
        await second.send(b"<iq type='get' id='p9'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert b'type="result"' in await second.read_until(b'id="p9"')
        metrics = await asyncio.to_thread(cluster.metrics, "cm-sm-other")
        assert 'stanzad_cm_sm_resumptions_total{result="other_pod"}' in metrics
        old_metrics = await asyncio.to_thread(cluster.metrics, "cm-1")
        assert "stanzad_cm_sm_handed_over_total 1.0" in old_metrics
    finally:
        await chatter.logout()
        await raw.close()
        await second.close()


async def test_xep0198_5_new_bind_then_resume_elsewhere_one_winner_item_not_found(
    cluster: Cluster, users: Users, other_cm_port: int
) -> None:
    """A new bind of the full JID wins over a later resume on another pod: the resume gets
    <item-not-found/> and the new session keeps the resource."""
    jid, pw = await users.create()
    raw, sm_id = await sm_session(cluster, jid, pw, "contested")
    rebound = RawClient("127.0.0.1", cluster.c2s_port)
    late = RawClient("127.0.0.1", other_cm_port)
    try:
        cut(raw)
        assert b"<jid>" in await raw_login(rebound, jid, pw, resource="contested")
        await raw_auth(late, jid, pw)
        await late.send(f"<resume xmlns='{SM_NS}' previd='{sm_id}' h='0'/>".encode())
        assert b"<item-not-found" in await late.read_until(b"</failed>")
        record = (await users.redis.hgetall(keys.sessions(jid)))[b"contested"]
        assert record.startswith(b"cm-1 ")
        await rebound.send(b"<iq type='get' id='p10'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert b'type="result"' in await rebound.read_until(b'id="p10"')
    finally:
        await raw.close()
        await rebound.close()
        await late.close()


async def test_xep0198_5_sigterm_detaches_and_the_client_resumes_on_the_other_cm(
    cluster: Cluster, users: Users
) -> None:
    """Issue 16, rolling upgrades: SIGTERM of the connection manager an SM client is on closes
    its TCP connection without </stream:stream> (XEP-0198 §5: the session is detached, not
    ended); the client resumes on the other connection manager and every numbered message
    arrives exactly once, in order, those sent after the SIGTERM too.  A session without SM
    gets today's <system-shutdown/>.  The stopped pod exits once nothing is left to hand
    over, before its drain timeout."""
    port = cluster.start_cm("cm-sm-term", STANZAD_DRAIN_TIMEOUT_S="60")
    proc = cluster.procs["cm-sm-term"]
    jid, pw = await users.create()
    plain_jid, plain_pw = await users.create()
    raw = RawClient("127.0.0.1", port)
    plain = RawClient("127.0.0.1", port)
    second = RawClient("127.0.0.1", cluster.c2s_port)
    chatter = await sender(cluster, users)
    try:
        sm_id = await raw_sm_login(raw, jid, pw, "upgrading")
        assert b"<jid>" in await raw_login(plain, plain_jid, plain_pw)
        await raw.send(b"<presence/>")
        await raw.read_until(b"<presence")  # its own, reflected: the first stanza counted
        send_numbered(chatter, f"{jid}/upgrading", range(0, 20))
        got, _ = await bodies_until(raw, 19)
        assert got == list(range(20))
        proc.send_signal(signal.SIGTERM)
        tail = await raw.read_all(timeout=15)
        assert b"</stream:stream>" not in tail and b"<stream:error" not in tail, tail[-300:]
        await plain.expect_stream_error("system-shutdown", timeout=15)
        send_numbered(chatter, f"{jid}/upgrading", range(20, 40))  # held for the session
        await raw_auth(second, jid, pw)
        handled = 12  # the client processed 12 messages before its connection closed
        await second.send(
            f"<resume xmlns='{SM_NS}' previd='{sm_id}' h='{handled + 1}'/>".encode()
        )
        data = await second.read_until(b"<resumed")
        resumed, data = await bodies_until(second, 39, data)
        assert resumed == list(range(handled, 40))  # exactly once, in order
        send_numbered(chatter, f"{jid}/upgrading", range(40, 45))
        got, _ = await bodies_until(second, 44)
        assert got == list(range(40, 45))  # and nothing of before came again
        record = (await users.redis.hgetall(keys.sessions(jid)))[b"upgrading"]
        assert record.startswith(b"cm-1 ")
        await asyncio.to_thread(proc.wait, 90)  # hang guard; the drain timeout is 60 s
        assert proc.returncode == 0, cluster.log("cm-sm-term")[-2000:]
        log = cluster.log("cm-sm-term")
        assert "session handed over to cm-1" in log
        assert "drain timeout" not in log  # it left because every session was taken over
    finally:
        await chatter.logout()
        await raw.close()
        await plain.close()
        await second.close()


async def test_xep0198_5_owner_killed_resume_elsewhere_from_the_sessions_log(
    cluster: Cluster, users: Users
) -> None:
    """The owner of a detached session died without a word (SIGKILL): a <resume/> on another
    pod gets no answer to its TAKEOVER within STANZAD_SM_TAKEOVER_TIMEOUT_S, sees the owner's
    heartbeat expire, and rebuilds the queue from the session's log (durable deliveries,
    docs/architecture.md): <resumed h/> with the 'h' the facts kept at detach, then the
    stanzas the client's 'h' did not acknowledge, in order."""
    port = cluster.start_cm("cm-sm-killed")
    jid, pw = await users.create()
    raw = RawClient("127.0.0.1", port)
    second = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        sm_id = await raw_sm_login(raw, jid, pw, "doomed")
        await raw.send(b"<presence/><iq type='get' id='k1'><ping xmlns='urn:xmpp:ping'/></iq>")
        await raw.read_until(b'id="k1"')  # two stanzas handled, one written (the result)
        cut(raw)  # detached: the facts now hold the counters

        async def detached() -> bool:
            f = await users.redis.hgetall(keys.sm_facts(jid, sm_id))
            return f.get(b"handled") == b"2"

        await eventually(detached, timeout=15, what="the facts of the detached session")
        cluster.kill("cm-sm-killed")
        await raw_auth(second, jid, pw)
        await second.send(f"<resume xmlns='{SM_NS}' previd='{sm_id}' h='0'/>".encode())
        reply = await second.read_until(b'id="k1"', timeout=45)  # hang guard
        assert b"<failed" not in reply, reply
        assert b'previd="' + sm_id.encode() + b'" h="2"' in reply  # the facts' 'h'
        assert reply.count(b'id="k1"') == 1  # not acknowledged by h=0: written again, once
        metrics = await asyncio.to_thread(cluster.metrics, "cm-1")
        assert metric_value(metrics, "stanzad_cm_sm_resumed_from_log_total") >= 1
        await second.send(b"<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert b'type="result"' in await second.read_until(b'id="p2"')
    finally:
        await raw.close()
        await second.close()
