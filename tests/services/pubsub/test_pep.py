"""Personal eventing (XEP-0163) with slixmpp clients that announce +notify in their entity
capabilities (XEP-0115): avatars (XEP-0084), OMEMO device lists, bookmarks (XEP-0402), and
the access models of XEP-0060 §4.5 as XEP-0163/XEP-0223 use them."""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

from slixmpp.exceptions import IqError

from shared.store import keys
from shared.store.roster import RosterItem
from shared.xmpp.subscription import State, Subscription
from tests.conftest import Users
from tests.support.cluster import Cluster
from tests.support.xmpp import Client, eventually

AVATAR_META = "urn:xmpp:avatar:metadata"
AVATAR_DATA = "urn:xmpp:avatar:data"
AXOLOTL = "eu.siacs.conversations.axolotl.devicelist"
OMEMO2 = "urn:xmpp:omemo:2:devices"
BOOKMARKS = "urn:xmpp:bookmarks:1"
ERRORS = "http://jabber.org/protocol/pubsub#errors"


class PepClient(Client):
    """A client that wants notifications of ``interests`` (XEP-0163 §4: +notify)."""

    def __init__(self, jid: str, password: str, interests: tuple[str, ...] = (
            AVATAR_META, AXOLOTL, OMEMO2, BOOKMARKS), mech: str = "SCRAM-SHA-256") -> None:
        super().__init__(jid, password, mech=mech)
        for plugin in ("xep_0004", "xep_0030", "xep_0115", "xep_0060", "xep_0163",
                       "xep_0084"):
            self.register_plugin(plugin)
        self.events: list[tuple[str, str, str, str]] = []  # from, node, item id, payload
        self.event_seen = asyncio.Event()
        self.add_event_handler("pubsub_publish", self._event)
        self.interests = interests

    async def login(self, host: str, port: int, timeout: float = 20,
                    presence: bool = True) -> None:
        """The initial presence carries caps with every interest: slixmpp keeps features
        per JID, so they are added once the full JID is bound."""
        await super().login(host, port, timeout, presence=False)
        for namespace in self.interests:
            await self.plugin["xep_0030"].add_feature(f"{namespace}+notify")
        await self.plugin["xep_0115"].update_caps(broadcast=False)
        if presence:
            self.send_presence()

    def _event(self, msg: Any) -> None:
        items = msg["pubsub_event"]["items"]
        for item in items["substanzas"]:
            payload = ET.tostring(item["payload"]).decode() if item["payload"] is not None else ""
            self.events.append((str(msg["from"]), items["node"], item["id"], payload))
        self.event_seen.set()

    async def wait_event(self, from_: str, node: str, timeout: float = 20) -> str:
        """The payload of the first event from ``from_`` on ``node`` (waits for it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for f, n, _, payload in self.events:
                if f == from_ and n == node:
                    return payload
            self.event_seen.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no event on {node} from {from_}; got {self.events}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event_seen.wait(), remaining)

    def saw(self, from_: str, node: str) -> bool:
        return any(f == from_ and n == node for f, n, _, _ in self.events)

    def options(self, **fields: str) -> Any:
        form = self.plugin["xep_0004"].make_form("submit")
        form.add_field(var="FORM_TYPE", ftype="hidden",
                       value="http://jabber.org/protocol/pubsub#publish-options")
        for var, value in fields.items():
            form.add_field(var=f"pubsub#{var}", value=value)
        return form

    async def publish(self, node: str, payload: str, item_id: str | None = None,
                      **options: str) -> Any:
        return await self.plugin["xep_0060"].publish(
            None, node, id=item_id, payload=ET.fromstring(payload),
            options=self.options(**options) if options else None, timeout=20)


async def befriend(users: Users, a: str, b: str) -> None:
    """A mutual presence subscription (RFC 6121 'both'), straight in the store."""
    both = State(Subscription.BOTH)
    await users.rosters.put(a, RosterItem(b, state=both))
    await users.rosters.put(b, RosterItem(a, state=both))


@contextlib.asynccontextmanager
async def online(cluster: Cluster, jid: str, password: str, **kw: Any
                 ) -> AsyncIterator[PepClient]:
    client = PepClient(jid, password, **kw)
    await client.login("127.0.0.1", cluster.c2s_port)
    try:
        yield client
    finally:
        await client.logout()


async def caps_known(users: Users, bare: str, timeout: float = 20) -> None:
    """Until the server resolved the caps of every resource of ``bare`` (XEP-0115: a
    disco#info to one resource per ver, cached in Redis)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        vers = await users.redis.hvals(keys.pep_resources(bare))
        if vers and all(vers) and await users.redis.exists(
                *(keys.caps_features(v.decode()) for v in vers)) == len(vers):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"caps of {bare} not resolved")


def metadata(digest: str) -> str:
    return (f"<metadata xmlns='{AVATAR_META}'><info bytes='4' id='{digest}' height='1' "
            "width='1' type='image/png'/></metadata>")


def devicelist(*ids: int) -> str:
    return ("<list xmlns='eu.siacs.conversations.axolotl'>"
            + "".join(f"<device id='{i}'/>" for i in ids) + "</list>")


async def test_contacts_see_avatar_and_omemo_devices_live_and_on_login(
    pubsub_cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    await befriend(users, alice, bob)
    async with online(pubsub_cluster, alice, pw_a) as a, online(pubsub_cluster, bob, pw_b) as b:
        await caps_known(users, alice)
        await caps_known(users, bob)
        # XEP-0084 §4.1: data, then metadata; OMEMO device list with access_model=open
        await a.publish(AVATAR_DATA, f"<data xmlns='{AVATAR_DATA}'>iVBO</data>", "abc123")
        await a.publish(AVATAR_META, metadata("abc123"), "abc123")
        await a.publish(AXOLOTL, devicelist(1001), "current", access_model="open")
        await b.publish(AXOLOTL, devicelist(2002), "current", access_model="open")
        assert "abc123" in await b.wait_event(alice, AVATAR_META)
        assert "1001" in await b.wait_event(alice, AXOLOTL)
        assert "2002" in await a.wait_event(bob, AXOLOTL)
        assert "1001" in await a.wait_event(alice, AXOLOTL)  # the owner's resources too
        assert not b.saw(alice, AVATAR_DATA)  # nobody asked for data+notify
    # on login: the last item of each node bob wants, of alice's and of his own
    async with online(pubsub_cluster, bob, pw_b) as b2:
        assert "abc123" in await b2.wait_event(alice, AVATAR_META)
        assert "1001" in await b2.wait_event(alice, AXOLOTL)
        assert "2002" in await b2.wait_event(bob, AXOLOTL)
        # and the data on request (XEP-0084 §4.2)
        got = await b2.plugin["xep_0060"].get_items(alice, AVATAR_DATA, timeout=20)
        assert "iVBO" in str(got)


async def test_a_stranger_gets_nothing_from_a_presence_access_node(
    pubsub_cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    carol, pw_c = await users.create("carol")
    await befriend(users, alice, bob)
    async with online(pubsub_cluster, alice, pw_a) as a, \
            online(pubsub_cluster, bob, pw_b) as b, online(pubsub_cluster, carol, pw_c) as c:
        for jid in (alice, bob, carol):
            await caps_known(users, jid)
        await a.publish(AVATAR_META, metadata("secret1"), "secret1")  # presence access
        assert "secret1" in await b.wait_event(alice, AVATAR_META)
        # XEP-0060 §6.5.9.2: not-authorized with presence-subscription-required; the
        # answer comes from alice's partition after the publish was fanned out, on the
        # same connection manager subject, so a notification to carol would be here first
        try:
            await c.plugin["xep_0060"].get_items(alice, AVATAR_META, timeout=20)
            raise AssertionError("a stranger read a presence-access node")
        except IqError as err:
            assert err.condition == "not-authorized"
            assert err.iq.xml.find(f".//{{{ERRORS}}}presence-subscription-required") is not None
        assert not c.saw(alice, AVATAR_META)


async def test_whitelist_refuses_a_contact_and_publish_options_preconditions(
    pubsub_cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    await befriend(users, alice, bob)
    async with online(pubsub_cluster, alice, pw_a) as a, online(pubsub_cluster, bob, pw_b) as b:
        # XEP-0223: a private node (whitelist) created through publish-options
        await a.publish("urn:example:private", "<secret xmlns='urn:example:private'>x</secret>",
                        "p1", access_model="whitelist", persist_items="true")
        try:
            await b.plugin["xep_0060"].get_items(alice, "urn:example:private", timeout=20)
            raise AssertionError("the whitelist let a contact in")
        except IqError as err:  # XEP-0060 §6.5.9.4: not-allowed with closed-node
            assert err.condition == "not-allowed"
            assert err.iq.xml.find(f".//{{{ERRORS}}}closed-node") is not None
        try:
            await b.plugin["xep_0060"].subscribe(alice, "urn:example:private", timeout=20)
            raise AssertionError("the whitelist let a contact subscribe")
        except IqError as err:  # §6.1.3.4
            assert err.condition == "not-allowed"
        # XEP-0060 §7.1.5: a mismatching precondition fails with precondition-not-met
        try:
            await a.publish("urn:example:private", "<secret xmlns='urn:example:private'>y"
                            "</secret>", "p2", access_model="open")
            raise AssertionError("a publish with a mismatching access model passed")
        except IqError as err:
            assert err.condition == "conflict"
            assert err.iq.xml.find(f".//{{{ERRORS}}}precondition-not-met") is not None
        # the same options as the node: fine
        await a.publish("urn:example:private", "<secret xmlns='urn:example:private'>z</secret>",
                        "p3", access_model="whitelist")


async def test_bookmarks_round_trip_across_two_devices(
    pubsub_cluster: Cluster, users: Users
) -> None:
    alice, pw = await users.create("alice")
    room = "room@conference.localhost"
    conference = (f"<conference xmlns='{BOOKMARKS}' name='The Room' autojoin='true'>"
                  "<nick>al</nick></conference>")
    async with online(pubsub_cluster, alice, pw) as phone:
        phone2 = PepClient(f"{alice}/laptop", pw)
        await phone2.login("127.0.0.1", pubsub_cluster.c2s_port)
        try:
            await caps_known(users, alice)
            # XEP-0402 §3.3: the publish-options a client sends
            await phone.publish(BOOKMARKS, conference, room, persist_items="true",
                                max_items="max", send_last_published_item="never",
                                access_model="whitelist")
            assert "The Room" in await phone2.wait_event(alice, BOOKMARKS)
            got = await phone2.plugin["xep_0060"].get_items(alice, BOOKMARKS, timeout=20)
            assert room in str(got) and "<nick>al</nick>" in str(got)
            # a second bookmark keeps the first (max_items=max)
            other = f"<conference xmlns='{BOOKMARKS}' name='Other'/>"
            await phone2.publish(BOOKMARKS, other, "other@conference.localhost",
                                 persist_items="true", max_items="max",
                                 send_last_published_item="never", access_model="whitelist")
            got = await phone.plugin["xep_0060"].get_items(alice, BOOKMARKS, timeout=20)
            assert room in str(got) and "other@conference.localhost" in str(got)
        finally:
            await phone2.logout()


async def test_blocking_applies_to_notifications_both_ways(
    pubsub_cluster: Cluster, users: Users
) -> None:
    """XEP-0191 §3.5: a contact who blocked the publisher gets none of its notifications,
    nor does one the publisher blocked (live and on login); the others do."""
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    carol, pw_c = await users.create("carol")
    dave, pw_d = await users.create("dave")
    for contact in (bob, carol, dave):
        await befriend(users, alice, contact)
    await users.account_data.block(carol, [alice], 100)  # carol blocked alice
    await users.account_data.block(alice, [f"{dave}/home"], 100)  # alice blocked one resource
    async with online(pubsub_cluster, alice, pw_a) as a, \
            online(pubsub_cluster, bob, pw_b) as b, \
            online(pubsub_cluster, carol, pw_c) as c:
        d = PepClient(dave, pw_d)
        d.boundjid.resource = "home"
        d.requested_jid.resource = "home"
        await d.login("127.0.0.1", pubsub_cluster.c2s_port)
        try:
            for jid in (alice, bob, carol, dave):
                await caps_known(users, jid)
            await a.publish(AVATAR_META, metadata("blocked1"), "blocked1")
            assert "blocked1" in await b.wait_event(alice, AVATAR_META)
            # bob's event came from the same fan-out; a second, later publish to make
            # sure nothing for carol or dave was merely slower
            await a.publish(AVATAR_META, metadata("blocked2"), "blocked2")
            await eventually(lambda: any(e[2] == "blocked2" for e in b.events), 20,
                             "bob's second event")
            assert not c.saw(alice, AVATAR_META) and not d.saw(alice, AVATAR_META)
        finally:
            await d.logout()
    async with online(pubsub_cluster, carol, pw_c) as c2, online(pubsub_cluster, bob, pw_b) as b2:
        assert "blocked2" in await b2.wait_event(alice, AVATAR_META)  # last item on login
        await asyncio.sleep(1)
        assert not c2.saw(alice, AVATAR_META)
