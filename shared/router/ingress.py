"""Where a stanza entering the cluster goes, as pure functions (RFC 6120 §10, RFC 6121).

A connection manager asks `from_client` for each stanza of a bound session, the s2s gateway
asks `from_peer` for each stanza a remote server sends: the answer names the service family
that takes it, the bare JID whose partition orders it, and the 'to' of its envelope; or says
the stanza is for the server itself, or that it means nothing.  The callers do the I/O.
`routing.decide` takes over once the stanza has reached the router of its recipient.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final

from shared.bus import subjects
from shared.xmpp import ns
from shared.xmpp.jid import JID
from shared.xmpp.subscription import SUBSCRIPTION_TYPES

# IQs a user sends to their own account (no 'to', or their bare JID): the roster service
# answers them (RFC 6121 §2 roster, XEP-0054 vCard, XEP-0049 private storage, XEP-0191,
# XEP-0313 archive queries and preferences, XEP-0357 push registrations).
ACCOUNT_NAMESPACES: Final = frozenset(
    {ns.ROSTER, ns.VCARD, ns.PRIVATE, ns.BLOCKING, ns.MAM, ns.PUSH}
)
# IQs to a user's bare JID (or with no 'to': the sender's own) in these namespaces are for
# the user's personal eventing service (XEP-0163 §1.3: every account is a virtual pubsub
# service): the pubsub family, keyed by the PEP owner's bare JID.
PEP_NAMESPACES: Final = frozenset({ns.PUBSUB, ns.PUBSUB_OWNER})
BROADCAST_TYPES: Final = frozenset({"", "unavailable"})  # RFC 6121 §4.2, §4.5, §4.6


class Family(enum.Enum):
    """The subject family (shared/bus/subjects.py) a stanza is published on."""

    ROUTE = "route"
    ROSTER = "roster"
    PRESENCE = "presence"
    MUC = "muc"  # a local service domain's families: shared/bus/destinations.py
    PUBSUB = "pubsub"
    UPLOAD = "upload"
    COMPONENT = "component"  # an external component (XEP-0114), keyed by its domain


_SUBJECTS: Final = {
    Family.ROUTE: subjects.route,
    Family.ROSTER: subjects.roster,
    Family.PRESENCE: subjects.presence,
    Family.MUC: subjects.muc,
    Family.PUBSUB: subjects.pubsub,
    Family.UPLOAD: subjects.upload,
}
NO_SERVICES: Final[Mapping[str, str]] = {}


@dataclass(frozen=True, slots=True)
class Publish:
    family: Family
    key: str  # the bare JID (or `node_key`) whose partition the stanza is published to
    to: str  # the envelope's 'to'

    def subject(self, partitions: int) -> str:
        """The NATS subject of `family` for the partition of `key` (a component's: of the
        domain of `key`)."""
        if self.family is Family.COMPONENT:
            return subjects.component(self.key.rpartition("@")[2])
        return _SUBJECTS[self.family](subjects.partition(self.key, partitions))


@dataclass(frozen=True, slots=True)
class ToServer:
    """For the server itself (RFC 6120 §10.3); ``addressed``: the stanza named the domain."""

    addressed: bool


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


Ingress = Publish | ToServer | Drop


def node_key(service: str, node: str) -> str:
    """The partition key of a request about ``node`` of a generic pubsub service: every
    request naming one node goes to one partition, in order (XEP-0060 has no order across
    nodes), and the nodes of a busy domain spread over the partitions.  A request naming no
    node is keyed by the service JID itself ('/' cannot occur in a domain, so the keys of
    a service's nodes never equal it)."""
    return f"{service}/{node}" if node else service


def _service(kind: str, type_: str, to: JID, family: str, node: str) -> Publish:
    """A stanza to a local service domain: the muc service's partition of the room; the
    pubsub service's partition of the node an IQ request names (`node_key`), or of the
    domain for anything else (node-less requests, answers to its caps queries)."""
    key = to.bare_str
    if family == Family.PUBSUB.value and kind == "iq" and type_ in ("get", "set"):
        key = node_key(key, node)
    return Publish(Family(family), key, str(to))


def from_client(
    kind: str, type_: str, to: JID | None, sender: JID, domains: str | Collection[str],
    child_ns: str = "", services: Mapping[str, str] = NO_SERVICES, node: str = "",
) -> Ingress:
    """A bound client's stanza (``domains``: the account domains served here, the main one
    and the virtual hosts, or just one; ``child_ns``: the namespace of an IQ's payload;
    ``services``: the local service domains and their families,
    shared/bus/destinations.py; ``node``: the node an IQ to a pubsub domain names,
    shared/xmpp/pubsub.py `request_node`)."""
    local = (domains,) if isinstance(domains, str) else domains
    own_bare = sender.bare_str
    if kind == "presence":
        return _client_presence(type_, to, own_bare, local)
    if to is not None and to.domain in services:  # a room, a node: its service's partition
        return _service(kind, type_, to, services[to.domain], node)
    if (kind == "iq" and child_ns in PEP_NAMESPACES and type_ in ("get", "set")
            and (to is None or (to.local is not None and to.domain in local
                                and to.resource is None))):
        pep = own_bare if to is None else to.bare_str  # XEP-0163 §4.1 (own), §4.3 (a contact's)
        return Publish(Family.PUBSUB, pep, pep)
    own = to is None or (to.local == sender.local and to.domain == sender.domain
                         and to.resource is None)
    if own and (
        child_ns in ACCOUNT_NAMESPACES
        or (to is not None and child_ns in (ns.DISCO_INFO, ns.DISCO_ITEMS))
    ):
        return Publish(Family.ROSTER, own_bare, own_bare)
    if to is None or (to.local is None and to.resource is None and to.domain in local):
        return ToServer(addressed=to is not None)
    if to.domain not in local:
        # federation: through the router of the sender's partition, which enforces the
        # sender's blocklist (XEP-0191 §3.5) and hands the stanza to the s2s gateway
        return Publish(Family.ROUTE, own_bare, str(to))
    return Publish(Family.ROUTE, to.bare_str, str(to))


def account_family(child_ns: str) -> Family:
    """Who answers an IQ get/set that reached the router of a bare JID (RFC 6121 §8.5.2.1.3,
    "the server on the account's behalf"; from a peer server, or a client IQ the router
    handed on): the user's personal eventing service for the pubsub namespaces (XEP-0163),
    otherwise the account's roster service (roster, vCard, private storage, disco)."""
    return Family.PUBSUB if child_ns in PEP_NAMESPACES else Family.ROSTER


def _client_presence(
    type_: str, to: JID | None, own_bare: str, local: Collection[str]
) -> Ingress:
    if to is None:
        if type_ in BROADCAST_TYPES:  # broadcast presence, RFC 6121 §4.2, §4.5
            return Publish(Family.PRESENCE, own_bare, "")
        return Drop("presence of this type without 'to'")  # §4.7.1
    if type_ in SUBSCRIPTION_TYPES:  # §3: the user's roster changes first
        return Publish(Family.ROSTER, own_bare, to.bare_str)
    if type_ in BROADCAST_TYPES:  # directed presence, §4.6
        return Publish(Family.PRESENCE, own_bare, str(to))
    if type_ == "error":
        key = own_bare if to.domain not in local else to.bare_str  # federation, as above
        return Publish(Family.ROUTE, key, str(to))
    return Drop("presence probe from a client")  # §4.3: only servers probe


def from_peer(
    kind: str, type_: str, to: JID, services: Mapping[str, str] = NO_SERVICES, node: str = ""
) -> Ingress:
    """A stanza a remote server sent to one of our addresses (``to`` is in our domain or
    one of its service domains; ``node`` as for `from_client`)."""
    bare = to.bare_str
    if to.domain in services:  # presence too: a service tracks its remote occupants itself
        return _service(kind, type_, to, services[to.domain], node)
    if kind == "presence":
        if type_ in SUBSCRIPTION_TYPES:  # RFC 6121 §3: the local user's roster
            return Publish(Family.ROSTER, bare, bare)
        if type_ == "probe":  # §4.3: answered by the local user's presence service
            return Publish(Family.PRESENCE, bare, bare)
        return Publish(Family.ROUTE, bare, str(to))  # available, unavailable, error (§4.2-§4.6)
    if to.local is None and to.resource is None:
        return ToServer(addressed=True)
    return Publish(Family.ROUTE, bare, str(to))


def peer_presence_to_pep(
    kind: str, type_: str, to: JID, services: Mapping[str, str] = NO_SERVICES
) -> Publish | None:
    """Where a copy of a remote contact's presence to a local account goes, besides the
    account's router: the account's personal eventing service, which keeps the XEP-0115
    caps of remote contacts' available resources (XEP-0163 §4.3: notifications to those
    with ``<node>+notify``; §6.2: the last published item when they come online).  Only
    available and unavailable presence to an account (not to a service domain)."""
    if (kind != "presence" or type_ not in BROADCAST_TYPES or to.local is None
            or to.domain in services):
        return None
    bare = to.bare_str
    return Publish(Family.PUBSUB, bare, bare)
