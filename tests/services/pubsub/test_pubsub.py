"""The pubsub service on the pubsub domain (XEP-0060), over raw client streams."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tests.conftest import Users
from tests.support.cluster import Cluster
from tests.support.xmpp import RawClient, ask_iq, eventually, raw_login

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


def _metric(cluster: Cluster, member: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", cluster.metrics(member), re.M)
    return float(found.group(1)) if found else 0.0


async def test_nodes_of_the_pubsub_domain_spread_over_the_members_in_order(
    pubsub_cluster: Cluster, users: Users
) -> None:
    """Requests are keyed by (service, node) (shared/router/ingress.py `node_key`): with two
    pubsub members both serve nodes of one domain, each node's items in publish order;
    node-less requests (disco of the service, §5.2) are answered on the domain's partition."""
    alice, pw_a = await users.create("alice")
    bob, pw_b = await users.create("bob")
    members = ("pubsub-1", "pubsub-2")
    pubsub_cluster.start_pubsub("pubsub-2")
    try:
        def split() -> bool:
            held = [_metric(pubsub_cluster, m, "stanzad_pubsub_partitions") for m in members]
            return all(held) and sum(held) == pubsub_cluster.partitions
        await eventually(split, timeout=30, what="partitions split between two members")
        before = [_metric(pubsub_cluster, m, "stanzad_pubsub_publishes_total") for m in members]
        tag = alice.partition("@")[0]
        nodes = [f"spread-{tag}-{i}" for i in range(12)]
        async with logged_in(pubsub_cluster, alice, pw_a) as a, \
                logged_in(pubsub_cluster, bob, pw_b) as b:
            for i, node in enumerate(nodes):
                created = await ask_iq(a, (
                    f"<iq type='set' id='c{i}' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'>"
                    f"<create node='{node}'/></pubsub></iq>"), f"c{i}")
                assert b'type="result"' in created, created
                sub = await ask_iq(b, (
                    f"<iq type='set' id='s{i}' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'>"
                    f"<subscribe node='{node}' jid='{bob}/raw'/></pubsub></iq>"), f"s{i}")
                assert b'subscription="subscribed"' in sub, sub
            # three items per node, sent without waiting: each node keeps their order
            await a.send("".join(
                f"<iq type='set' id='p{i}-{n}' to='{SERVICE}'><pubsub xmlns='{PUBSUB}'>"
                f"<publish node='{node}'><item id='i{n}'><v xmlns='urn:example:iot'>{n}</v>"
                "</item></publish></pubsub></iq>"
                for n in range(3) for i, node in enumerate(nodes)).encode())
            events = b""
            while events.count(b"</message>") < 3 * len(nodes):
                events += await b.read_until(b"</message>", timeout=20)
            for node in nodes:
                seen = re.findall(rf'<items node="{node}"><item id="(i\d)"'.encode(), events)
                assert seen == [b"i0", b"i1", b"i2"], (node, events)
            # node-less: the service's disco lists the nodes created on both members
            listed = await ask_iq(a, (
                f"<iq type='get' id='d1' to='{SERVICE}'><query "
                "xmlns='http://jabber.org/protocol/disco#items'/></iq>"), "d1")
            assert all(f'node="{n}"'.encode() in listed for n in nodes), listed
        await asyncio.sleep(0)
        after = [_metric(pubsub_cluster, m, "stanzad_pubsub_publishes_total") for m in members]
        grew = [a - b for a, b in zip(after, before, strict=True)]
        assert sum(grew) == 3 * len(nodes) and all(grew), grew  # both members published
    finally:
        pubsub_cluster.kill("pubsub-2", signal.SIGTERM)
