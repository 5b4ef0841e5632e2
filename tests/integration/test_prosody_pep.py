"""Personal eventing (XEP-0163) to a contact on a real Prosody 0.12 on loopback: a Prosody
user subscribed to a stanzad user gets the stanzad user's PEP notifications live, and the
last published item when it comes online (§4.3, §6.2), as its XEP-0115 caps ask.

The stanzad side learns the contact's caps from the presence Prosody sends our user (the
s2s gateway copies it to our user's pubsub partition) and resolves an unknown ``ver`` with
a disco#info from the pubsub domain (pubsub.stanzad.example) to the Prosody user's full JID,
whose answer comes back over Prosody's stream to that domain; so the pubsub domain federates
as a service domain of its own (RFC 6120 §13.7, XEP-0220 §2.4), as rooms do in
test_prosody_muc.py.  One run: Server Dialback with STARTTLS.
Skipped when the Debian package `prosody` is not installed (.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from devtools import localservers
from shared.store import keys
from shared.xmpp.subscription import Subscription
from tests.conftest import Users
from tests.services.pubsub.test_pep import BOOKMARKS, PepClient
from tests.support import prosody as prosody_mod
from tests.support.cluster import Cluster, new_cluster
from tests.support.dns import DNSServer
from tests.support.xmpp import eventually

pytestmark = pytest.mark.skipif(
    not prosody_mod.available(),
    reason="prosody is not installed (Debian package `prosody`; .ci/run installs it)",
)

OURS, THEIRS = "stanzad.example", "prosody.example"
OUR_PUBSUB = f"pubsub.{OURS}"
NICK = "http://jabber.org/protocol/nick"  # XEP-0172


@dataclass
class Interop:
    cluster: Cluster
    prosody: prosody_mod.Prosody
    users: Users


@pytest.fixture(scope="module")
async def interop() -> AsyncIterator[Interop]:
    cluster = new_cluster(OURS)
    gw_port = localservers.free_port()
    p_port = localservers.free_port()
    records: dict[tuple[str, str], list[str]] = {
        (f"gw.{OURS}", "A"): ["127.0.0.1"], (f"gw.{THEIRS}", "A"): ["127.0.0.1"]}
    for domain in (OURS, OUR_PUBSUB):
        records[(f"_xmpp-server._tcp.{domain}", "SRV")] = [f"0 5 {gw_port} gw.{OURS}."]
    records[(f"_xmpp-server._tcp.{THEIRS}", "SRV")] = [f"0 5 {p_port} gw.{THEIRS}."]
    dns = DNSServer(records)
    await dns.start()
    prosody = prosody_mod.Prosody(cluster.workdir / "prosody", THEIRS, OURS, dns.port,
                                  s2s_port=p_port, peer_services=(OUR_PUBSUB,))
    users: Users | None = None
    try:
        prosody.start()
        cluster.start_servers()
        cluster.start_core()
        cluster.start_pubsub()
        cluster.start_s2s(port=gw_port, STANZAD_S2S_DNS_SERVERS=f"127.0.0.1:{dns.port}")
        cluster.start_cm()
        users = Users(cluster)
        yield Interop(cluster, prosody, users)
    finally:
        if users is not None:
            await users.close()
        cluster.stop()
        prosody.stop()
        dns.stop()


def _logs(ix: Interop) -> str:
    return (f"--- prosody\n{ix.prosody.log()[-6000:]}\n--- s2s\n{ix.cluster.log('s2s-1')}"
            f"\n--- pubsub\n{ix.cluster.log('pubsub-1')[-3000:]}")


async def _carol(ix: Interop, jid: str, resource: str) -> PepClient:
    """The Prosody user's client: caps with +notify for nicknames and bookmarks."""
    c = PepClient(f"{jid}/{resource}", "carol-pw", interests=(NICK, BOOKMARKS),
                  mech="SCRAM-SHA-1")
    await c.login("127.0.0.1", ix.prosody.c2s_port)
    return c


async def test_xep0163_prosody_contact_gets_notifications_and_the_last_item(
    interop: Interop,
) -> None:
    ix = interop
    ours, pw = await ix.users.create("alice")
    theirs = f"carol{secrets.token_hex(3)}@{THEIRS}"
    await asyncio.to_thread(ix.prosody.register, theirs.partition("@")[0], "carol-pw")
    a = PepClient(f"{ours}/laptop", pw, interests=())
    await a.login("127.0.0.1", ix.cluster.c2s_port)
    c = await _carol(ix, theirs, "phone")
    c2: PepClient | None = None
    try:
        await a.get_roster()
        await c.get_roster()
        a.send_presence(pto=theirs, ptype="subscribe")  # slixmpp approves and asks back

        async def both() -> bool:
            item = await ix.users.rosters.item(ours, theirs)
            return item is not None and item.state.subscription == Subscription.BOTH

        async def carol_known(full: str) -> bool:
            """Carol's resource is kept with its caps, and the caps are resolved (a
            disco#info from our pubsub domain through both gateways)."""
            ver = await ix.users.redis.hget(keys.pep_remote(ours), full)
            return ver is not None and bool(
                await ix.users.redis.exists(keys.caps_features(ver.decode())))

        try:
            await eventually(both, 30, "subscription both on stanzad's side")
            await eventually(lambda: carol_known(f"{theirs}/phone"), 40,
                             "the Prosody user's caps")
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{_logs(ix)}")
        # XEP-0223: a private node's item reaches no contact; the public one that follows
        # (same PEP service, same s2s stream, so in order) does
        await a.publish(BOOKMARKS, f'<conference xmlns="{BOOKMARKS}" name="secret"/>',
                        item_id="room@conference.example", persist_items="true",
                        access_model="whitelist")
        await a.publish(NICK, f'<nick xmlns="{NICK}">Alice in Wonderland</nick>')
        try:
            got = await c.wait_event(ours, NICK, timeout=40)
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{_logs(ix)}")
        assert "Alice in Wonderland" in got
        assert not c.saw(ours, BOOKMARKS), c.events
        # a second resource coming online gets the last published item (XEP-0163 §6.2);
        # its caps are the same ver, known already
        c2 = await _carol(ix, theirs, "tablet")
        try:
            got = await c2.wait_event(ours, NICK, timeout=40)
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{_logs(ix)}")
        assert "Alice in Wonderland" in got
        assert not c2.saw(ours, BOOKMARKS), c2.events
        # its going offline removes it from the kept caps (unavailable presence)
        await c2.logout()
        c2 = None

        async def tablet_gone() -> bool:
            return not await ix.users.redis.hexists(keys.pep_remote(ours),
                                                    f"{theirs}/tablet")

        await eventually(tablet_gone, 30, "the tablet's caps forgotten")
    finally:
        await a.logout()
        await c.logout()
        if c2 is not None:
            await c2.logout()
