"""Which node a request to a pubsub service names (the partition it is published on)."""

from __future__ import annotations

import pytest
from lxml import etree

from shared.xmpp.pubsub import request_node

PUBSUB = "http://jabber.org/protocol/pubsub"
OWNER = "http://jabber.org/protocol/pubsub#owner"
FORM = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>"
        f"{PUBSUB}#publish-options</value></field></x>")


@pytest.mark.parametrize(
    ("child", "node"),
    [
        # XEP-0060 §7.1: the node of <publish/>, not of what follows it
        (f"<pubsub xmlns='{PUBSUB}'><publish node='n1'><item/></publish>"
         f"<publish-options>{FORM}</publish-options></pubsub>", "n1"),
        (f"<pubsub xmlns='{PUBSUB}'><subscribe node='n2' jid='a@b'/><options node='x'/>"
         "</pubsub>", "n2"),  # §6.3.7 subscribe and configure
        (f"<pubsub xmlns='{PUBSUB}'><items node='n3' max_items='1'/></pubsub>", "n3"),
        (f"<pubsub xmlns='{OWNER}'><configure node='n4'/></pubsub>", "n4"),
        (f"<pubsub xmlns='{OWNER}'><delete node='n5'><redirect uri='x'/></delete></pubsub>",
         "n5"),
        # create with a configuration: <create/> comes first (§8.1.3)
        (f"<pubsub xmlns='{PUBSUB}'><create node='n6'/><configure/></pubsub>", "n6"),
        ("<query xmlns='http://jabber.org/protocol/disco#items' node='n7'/>", "n7"),
        ("<query xmlns='http://jabber.org/protocol/disco#info' node='n8'/>", "n8"),
        # node-less: the service's own partition
        (f"<pubsub xmlns='{PUBSUB}'><create/><configure/></pubsub>", ""),  # instant (§8.1.2)
        (f"<pubsub xmlns='{PUBSUB}'><subscriptions/></pubsub>", ""),  # §5.6, all nodes
        (f"<pubsub xmlns='{PUBSUB}'><affiliations/></pubsub>", ""),  # §5.7
        (f"<pubsub xmlns='{OWNER}'><default/></pubsub>", ""),  # §8.3
        ("<query xmlns='http://jabber.org/protocol/disco#items'/>", ""),  # §5.2
        (f"<pubsub xmlns='{PUBSUB}'/>", ""),
        ("<ping xmlns='urn:xmpp:ping' node='not-pubsub'/>", ""),
        ("", ""),
    ],
)
def test_request_node(child: str, node: str) -> None:
    iq = etree.fromstring(f"<iq xmlns='jabber:client' type='get' id='1'>{child}</iq>")
    assert request_node(iq) == node
