"""What the cluster's publish-subscribe services advertise (XEP-0060 §10, XEP-0163 §4):
the roster service answers disco on an account's bare JID with the PEP identity and
features, the pubsub service disco on its domain and nodes.  Collections (XEP-0248),
multiple subscriptions, leased subscriptions and pending-subscription retrieval are not
implemented and therefore not advertised.

`request_node` reads which node a request to the pubsub domain is about, so that the
connection manager and the s2s gateway publish it on the partition of that node."""

from __future__ import annotations

from typing import Final

from lxml import etree

from shared.xmpp import ns
from shared.xmpp.stanza import namespace

_COMMON: Final = (
    "access-authorize", "access-open", "access-presence", "access-roster", "access-whitelist",
    "config-node", "create-and-configure", "create-nodes", "delete-items", "delete-nodes",
    "item-ids", "last-published", "manage-affiliations", "manage-subscriptions",
    "member-affiliation", "meta-data", "modify-affiliations", "outcast-affiliation",
    "persistent-items", "publish", "publish-options", "publisher-affiliation", "purge-nodes",
    "retract-items", "retrieve-affiliations", "retrieve-default", "retrieve-items",
    "retrieve-subscriptions", "subscribe", "subscription-options",
)
# the pubsub domain: instant nodes; PEP: auto-create, presence-based delivery with +notify
SERVICE_FEATURES: Final = tuple(f"{ns.PUBSUB}#{f}" for f in (*_COMMON, "instant-nodes"))
PEP_FEATURES: Final = tuple(
    f"{ns.PUBSUB}#{f}" for f in (*_COMMON, "auto-create", "auto-subscribe",
                                 "filtered-notifications", "presence-notifications"))

_NODE_SPACES: Final = frozenset({ns.PUBSUB, ns.PUBSUB_OWNER})
_DISCO_SPACES: Final = frozenset({ns.DISCO_INFO, ns.DISCO_ITEMS})


def request_node(iq: etree._Element) -> str:
    """The node an IQ to a pubsub service is about ("" when it names none): the ``node`` of
    the first element inside ``<pubsub/>`` (XEP-0060 §5-§8: publish, subscribe, items,
    configure, ...; a ``<publish-options/>`` or ``<options/>`` follows it) or of a disco
    ``<query/>`` (§5.2-§5.5).  Node-less requests (disco of the service, ``<default/>``,
    ``<subscriptions/>``/``<affiliations/>`` across nodes, an instant node's ``<create/>``)
    give ""."""
    child = next((c for c in iq if isinstance(c.tag, str)), None)
    if child is None:
        return ""
    space = namespace(child.tag)
    if space in _DISCO_SPACES:
        return child.get("node") or ""
    if space not in _NODE_SPACES:
        return ""
    first = next((c for c in child if isinstance(c.tag, str)), None)
    return (first.get("node") or "") if first is not None else ""
