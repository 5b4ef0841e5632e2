"""What the cluster's publish-subscribe services advertise (XEP-0060 §10, XEP-0163 §4):
the roster service answers disco on an account's bare JID with the PEP identity and
features, the pubsub service disco on its domain and nodes.  Collections (XEP-0248),
multiple subscriptions, leased subscriptions and pending-subscription retrieval are not
implemented and therefore not advertised."""

from __future__ import annotations

from typing import Final

from shared.xmpp import ns

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
