"""The pubsub service on the pubsub domain (XEP-0060), over raw client streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tests.conftest import Users
from tests.support.cluster import Cluster
from tests.support.xmpp import RawClient, ask_iq, raw_login

PUBSUB = "http://jabber.org/protocol/pubsub"
OWNER = "http://jabber.org/protocol/pubsub#owner"
ERRORS = "http://jabber.org/protocol/pubsub#errors"
SERVICE = "pubsub.localhost"


@asynccontextmanager
async def logged_in(cluster: Cluster, jid: str, password: str, resource: str = "raw"
                    ) -> AsyncIterator[RawClient]:
    client = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(client, jid, password, resource)
        yield client
    finally:
        await client.close()


def config_form(**fields: str) -> str:
    body = "".join(f"<field var='pubsub#{k}'><value>{v}</value></field>" for k, v in fields.items())
    return ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{PUBSUB}#node_config</value></field>{body}</x>")


async def test_create_publish_retrieve_subscribe_notify(
    pubsub_cluster: Cluster, users: Users
) -> None:
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    node = f"sensors-{alice.partition('@')[0]}"
    async with logged_in(pubsub_cluster, alice, pw_a) as a, \
            logged_in(pubsub_cluster, bob, pw_b) as b:
        created = await ask_iq(a, (
            f"<iq type='set' id='c1' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'>"
            f"<create node='{node}'/><configure>{config_form(max_items='2')}</configure>"
            "</pubsub></iq>"), "c1")
        assert b'type="result"' in created, created
        again = await ask_iq(a, (
            f"<iq type='set' id='c2' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'>"
            f"<create node='{node}'/></pubsub></iq>"), "c2")
        assert b"<conflict" in again  # XEP-0060 §8.1.3.2
        sub = await ask_iq(b, (
            f"<iq type='set' id='s1' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'>"
            f"<subscribe node='{node}' jid='{bob}/raw'/></pubsub></iq>"), "s1")
        assert b'subscription="subscribed"' in sub, sub
        for n in range(3):
            published = await ask_iq(a, (
                f"<iq type='set' id='p{n}' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'>"
                f"<publish node='{node}'><item id='i{n}'><reading xmlns='urn:example:iot'>"
                f"{n}</reading></item></publish></pubsub></iq>"), f"p{n}")
            assert f'<item id="i{n}"/>'.encode() in published, published
            event = await b.read_until(b"</message>")
            assert b"http://jabber.org/protocol/pubsub#event" in event
            assert f"<reading xmlns=\"urn:example:iot\">{n}</reading>".encode() in event, event
        items = await ask_iq(b, (
            f"<iq type='get' id='g1' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'>"
            f"<items node='{node}'/></pubsub></iq>"), "g1")
        # max_items 2: the oldest was dropped
        assert b'id="i0"' not in items and b'id="i1"' in items and b'id="i2"' in items, items
        one = await ask_iq(b, (
            f"<iq type='get' id='g2' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'>"
            f"<items node='{node}' max_items='1'/></pubsub></iq>"), "g2")
        assert b'id="i1"' not in one and b'id="i2"' in one
        # retract notifies (notify_retract is on by default)
        await ask_iq(a, (
            f"<iq type='set' id='r1' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'>"
            f"<retract node='{node}' notify='true'><item id='i2'/></retract></pubsub></iq>"),
            "r1")
        event = await b.read_until(b"</message>")
        assert b'<retract id="i2"/>' in event, event
        # delete with redirect (§8.4.1)
        deleted = await ask_iq(a, (
            f"<iq type='set' id='d1' to='{SERVICE}'><pubsub xmlns='{OWNER}'>"
            f"<delete node='{node}'><redirect uri='xmpp:{SERVICE}?;node=elsewhere'/></delete>"
            "</pubsub></iq>"), "d1")
        assert b'type="result"' in deleted
        event = await b.read_until(b"</message>")
        assert b"<delete node=" in event and b"<redirect uri=" in event, event
        gone = await ask_iq(b, (
            f"<iq type='get' id='g3' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'>"
            f"<items node='{node}'/></pubsub></iq>"), "g3")
        assert b"<item-not-found" in gone
