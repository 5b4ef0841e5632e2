"""Rooms that survive their pod (issue 18): a muc process SIGKILLed mid-conversation, a
connection manager SIGKILLed under its occupants, fan-out over two connection managers, an
occupant whose session vanished without the room hearing it, and a client that never sent
initial presence logging off.

One cluster for the module: two muc processes and two connection managers, with short lease
and session lifetimes so that recovery happens in seconds.
"""

from __future__ import annotations

import re
import secrets
import signal
from collections.abc import AsyncIterator, Iterator

import nats
import pytest

from shared.bus import subjects
from shared.bus.envelope import Envelope, Kind
from shared.store import keys
from tests.conftest import Users
from tests.support.cluster import Cluster, metric_value, new_cluster
from tests.support.muc import Occupant
from tests.support.xmpp import eventually

SHORT = {"STANZAD_SESSION_TTL_S": "2", "STANZAD_LEASE_TTL_S": "2"}
# remote occupants silent for 2 s are asked whether they are there, and leave without an
# answer within 2 s (no s2s gateway runs here: nothing ever answers or bounces)
ROOMS = {**SHORT, "STANZAD_MUC_REMOTE_IDLE_S": "2", "STANZAD_MUC_REMOTE_TIMEOUT_S": "2"}
MUC = "conference.localhost"


@pytest.fixture(scope="module")
def rooms(postgres: object) -> Iterator[Cluster]:
    c = new_cluster()
    c.partitions = 8
    try:
        c.start_servers()
        c.start_router("router-1", **SHORT)
        c.start_presence(**SHORT)
        c.start_roster(**SHORT)
        c.start_muc("muc-a", **ROOMS)
        c.start_muc("muc-b", **ROOMS)
        c.start_cm("cm-a", STANZAD_SESSION_TTL_S="2")
        c.start_cm("cm-b", STANZAD_SESSION_TTL_S="2")
        yield c
    finally:
        c.stop()


@pytest.fixture
async def accounts(rooms: Cluster) -> AsyncIterator[Users]:
    u = Users(rooms)
    yield u
    await u.close()


async def _occupants(c: Cluster, users: Users, ports: list[int]) -> list[Occupant]:
    out = []
    for port in ports:
        jid, pw = await users.create("f")
        out.append(await Occupant(port, jid, pw).login())
    return out


def _fanouts(c: Cluster) -> float:
    return sum(metric_value(c.metrics(m), "stanzad_muc_envelopes_total", kind="fanout")
               for m in ("muc-a", "muc-b") if c.procs[m].poll() is None)


async def test_groupchat_is_one_fanout_envelope_per_connection_manager(
        rooms: Cluster, accounts: Users) -> None:
    a, b, c, d = await _occupants(rooms, accounts, [rooms.c2s_ports[i % 2] for i in range(4)])
    try:
        room = f"fan-{secrets.token_hex(4)}@{MUC}"
        await a.create(room, "a")
        for occ, nick in ((b, "b"), (c, "c"), (d, "d")):
            await occ.join(room, nick)
        before = _fanouts(rooms)
        await a.send(f"<message to='{room}' type='groupchat'><body>to all four</body></message>")
        for occ in (a, b, c, d):
            await occ.expect("to all four")
        # four occupants on two connection managers: two envelopes, not four
        await eventually(lambda: _fanouts(rooms) - before >= 2, 5, "fanouts counted")
        assert _fanouts(rooms) - before == 2
    finally:
        for o in (a, b, c, d):
            await o.close()


async def test_room_survives_sigkill_of_its_muc_process(rooms: Cluster, accounts: Users) -> None:
    a, b = await _occupants(rooms, accounts, rooms.c2s_ports[:2])
    try:
        room = f"survive-{secrets.token_hex(4)}@{MUC}"
        await a.create(room, "a")
        await b.send(f"<iq type='set' to='{room}' id='reg'><query xmlns='jabber:iq:register'>"
                     "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>"
                     "http://jabber.org/protocol/muc#register</value></field>"
                     "<field var='muc#register_roomnick'><value>b</value></field></x>"
                     "</query></iq>")
        await b.expect(r"id=\"reg\"[^>]*type=\"result\"|type=\"result\"[^>]*id=\"reg\"")
        await b.join(room, "b")
        await a.send(f"<message to='{room}' type='groupchat'><body>before</body></message>")
        await b.expect("before")
        p = subjects.partition(room, rooms.partitions)
        holder = (await accounts.redis.get(keys.partition_lease("muc", p))).decode()
        other = "muc-b" if holder == "muc-a" else "muc-a"
        rooms.kill(holder, signal.SIGKILL)
        try:
            # messages sent before the other process holds the partition are lost (core NATS
            # keeps none, docs/architecture.md); the room itself goes on with its occupants
            async def delivered() -> bool:
                tag = secrets.token_hex(3)
                await a.send(f"<message to='{room}' type='groupchat'><body>after-{tag}"
                             "</body></message>")
                await b.settle(0.5)
                return b.seen(f"after-{tag}")

            await eventually(delivered, 30, "the room delivers again")
            lease = await accounts.redis.get(keys.partition_lease("muc", p))
            assert lease is not None and lease.decode() == other
            assert metric_value(rooms.metrics(other), "stanzad_muc_room_moves_total") >= 1
            # both are still occupants: the roster of the room is as it was
            await b.send(f"<iq type='get' to='{room}' id='who'>"
                         "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
            info = await b.expect(r"id=\"who\".*?</iq>")
            assert re.search(rb"muc#roominfo_occupants.*?<value>2</value>", info.group(0))
            # the registered nickname came along from PostgreSQL (XEP-0045 §7.12)
            await b.send(f"<iq type='get' to='{room}' id='nick'><query xmlns='http://jabber."
                         "org/protocol/disco#info' node='x-roomuser-item'/></iq>")
            await b.expect(r"id=\"nick\".*?<identity [^>]*name=\"b\"")
        finally:
            rooms.start_muc(holder, **ROOMS)
    finally:
        await a.close()
        await b.close()


async def test_occupants_of_a_dead_connection_manager_leave(rooms: Cluster,
                                                            accounts: Users) -> None:
    a, b = await _occupants(rooms, accounts, rooms.c2s_ports[:2])
    try:
        room = f"cmdies-{secrets.token_hex(4)}@{MUC}"
        await a.create(room, "a")
        await b.join(room, "b")
        rooms.kill("cm-b", signal.SIGKILL)
        try:
            # the presence reaper ends b's session and its directed presence (within the
            # ghost-session bound: TTL + TTL/3 here, a few seconds)
            await a.expect(r"from=\"" + re.escape(room) + r"/b\"[^>]*type=\"unavailable\"", 30)
        finally:
            rooms.start_cm("cm-b", rooms.c2s_ports[1], STANZAD_SESSION_TTL_S="2")
    finally:
        await a.close()
        await b.close()


async def test_occupant_whose_session_is_gone_is_dropped_when_a_fanout_misses_it(
        rooms: Cluster, accounts: Users) -> None:
    """A connection manager that cannot deliver a room's FANOUT to a session that is not
    there any more reports it to the room (an error from that address), and the room removes
    the occupant with status 333.  The ghost is a join published as cm-a would publish it,
    for a session cm-a never had (as if its end never reached the room)."""
    [a] = await _occupants(rooms, accounts, rooms.c2s_ports[:1])  # on cm-a
    try:
        room = f"ghost-{secrets.token_hex(4)}@{MUC}"
        await a.create(room, "a")
        ghost = f"ghost-{secrets.token_hex(3)}@localhost/r"
        join = (f'<presence xmlns="jabber:client" from="{ghost}" to="{room}/ghost">'
                '<x xmlns="http://jabber.org/protocol/muc"/></presence>')
        nc = await nats.connect(rooms.nats_url_of("connection_manager"), tls=rooms.nats_tls())
        try:
            await nc.publish(subjects.muc(subjects.partition(room, rooms.partitions)),
                             Envelope(Kind.PRESENCE, to=f"{room}/ghost", from_=ghost,
                                      origin="cm-a/s-ghost", payload=join.encode()).encode())
            await nc.flush()
        finally:
            await nc.close()
        await a.expect(r"<presence[^>]*from=\"" + re.escape(room) + r"/ghost\"")
        await a.send(f"<message to='{room}' type='groupchat'><body>anyone?</body></message>")
        await a.expect("anyone[?]")
        left = await a.expect(r"<presence[^>]*from=\"" + re.escape(room)
                              + r"/ghost\"[^>]*type=\"unavailable\".*?</presence>", 15)
        assert b'<status code="333"/>' in left.group(0)
        assert metric_value(rooms.metrics("cm-a"), "stanzad_cm_undeliverable_total",
                            kind="fanout") >= 1
    finally:
        await a.close()


async def test_client_without_initial_presence_leaves_its_rooms_at_logoff(
        rooms: Cluster, accounts: Users) -> None:
    """RFC 6121 §4.6.3: a session that sent directed presence (joined a room, XEP-0045
    §7.2) but never initial presence still ends it when it logs off cleanly; before, only
    the reaper of a dead connection manager's sessions did."""
    [a] = await _occupants(rooms, accounts, rooms.c2s_ports[:1])
    jid, pw = await accounts.create("bot")
    bot = await Occupant(rooms.c2s_ports[1], jid, pw).login(presence=False)
    try:
        room = f"bot-{secrets.token_hex(4)}@{MUC}"
        await a.create(room, "a")
        await bot.join(room, "bot")
        await a.expect(r"<presence[^>]*from=\"" + re.escape(room) + r"/bot\"")
        await bot.send("</stream:stream>")
        await a.expect(r"<presence[^>]*from=\"" + re.escape(room)
                       + r"/bot\"[^>]*type=\"unavailable\"", 15)
    finally:
        await a.close()
        await bot.close()


async def test_remote_occupant_that_went_away_without_a_bounce_leaves(
        rooms: Cluster, accounts: Users) -> None:
    """A remote occupant whose server's stream died without bouncing anything: the room
    asks it (disco#info, through the s2s gateway) once it has been silent for
    STANZAD_MUC_REMOTE_IDLE_S, and without an answer within STANZAD_MUC_REMOTE_TIMEOUT_S it
    leaves with status 333.  The remote join is published as an s2s gateway would."""
    [a] = await _occupants(rooms, accounts, rooms.c2s_ports[:1])
    try:
        room = f"remote-{secrets.token_hex(4)}@{MUC}"
        await a.create(room, "a")
        far = f"far-{secrets.token_hex(3)}@remote.invalid/r"
        join = (f'<presence xmlns="jabber:client" from="{far}" to="{room}/far">'
                '<x xmlns="http://jabber.org/protocol/muc"/></presence>')
        nc = await nats.connect(rooms.nats_url_of("s2s_gateway"), tls=rooms.nats_tls())
        try:
            await nc.publish(subjects.muc(subjects.partition(room, rooms.partitions)),
                             Envelope(Kind.PRESENCE, to=f"{room}/far", from_=far,
                                      origin="s2s", payload=join.encode()).encode())
            await nc.flush()
        finally:
            await nc.close()
        await a.expect(r"<presence[^>]*from=\"" + re.escape(room) + r"/far\"")
        left = await a.expect(r"<presence[^>]*from=\"" + re.escape(room)
                              + r"/far\"[^>]*type=\"unavailable\".*?</presence>", 30)
        assert b'<status code="307"/><status code="333"/>' in left.group(0)
        # a local occupant, as silent, stays: its session's end would have told the room
        await a.send(f"<iq type='get' to='{room}' id='who'>"
                     "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        info = await a.expect(r"id=\"who\".*?</iq>")
        assert re.search(rb"muc#roominfo_occupants.*?<value>1</value>", info.group(0))
    finally:
        await a.close()
