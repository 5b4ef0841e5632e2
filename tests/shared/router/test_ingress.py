"""Where a stanza entering the cluster goes (shared/router/ingress.py): RFC 6120 §10,
RFC 6121 §3, §4."""

from __future__ import annotations

import pytest

from shared.bus import subjects
from shared.router.ingress import (
    Drop,
    Family,
    Publish,
    ToServer,
    account_family,
    from_client,
    from_peer,
    node_key,
    peer_presence_to_pep,
)
from shared.xmpp import ns
from shared.xmpp.jid import JID

DOMAIN = "example.com"
JULIET = JID.parse("juliet@example.com/balcony")


def _jid(text: str | None) -> JID | None:
    return None if text is None else JID.parse(text)


@pytest.mark.parametrize(
    ("kind", "type_", "to", "child_ns", "expected"),
    [
        # RFC 6121 §2: a roster get with no 'to' is the account's own
        ("iq", "get", None, ns.ROSTER, Publish(Family.ROSTER, "juliet@example.com",
                                               "juliet@example.com")),
        ("iq", "get", "juliet@example.com", ns.VCARD,
         Publish(Family.ROSTER, "juliet@example.com", "juliet@example.com")),
        # disco of the own bare JID goes to the account; with no 'to' to the server
        ("iq", "get", "juliet@example.com", ns.DISCO_INFO,
         Publish(Family.ROSTER, "juliet@example.com", "juliet@example.com")),
        ("iq", "get", None, ns.DISCO_INFO, ToServer(addressed=False)),
        ("iq", "get", "example.com", "urn:xmpp:ping", ToServer(addressed=True)),
        # RFC 6120 §10.3.1: a message with no 'to' is for the sender's bare JID (server)
        ("message", "chat", None, "", ToServer(addressed=False)),
        # a local recipient: the recipient's partition
        ("message", "chat", "romeo@example.com/orchard", "",
         Publish(Family.ROUTE, "romeo@example.com", "romeo@example.com/orchard")),
        # another domain: the sender's partition (its router applies the blocklist)
        ("message", "chat", "romeo@remote.example", "",
         Publish(Family.ROUTE, "juliet@example.com", "romeo@remote.example")),
        # presence: broadcast, directed, subscription, error, probe
        ("presence", "", None, "", Publish(Family.PRESENCE, "juliet@example.com", "")),
        ("presence", "unavailable", None, "",
         Publish(Family.PRESENCE, "juliet@example.com", "")),
        ("presence", "subscribe", None, "", Drop("presence of this type without 'to'")),
        ("presence", "subscribe", "romeo@example.com/orchard", "",
         Publish(Family.ROSTER, "juliet@example.com", "romeo@example.com")),
        ("presence", "", "romeo@example.com/orchard", "",
         Publish(Family.PRESENCE, "juliet@example.com", "romeo@example.com/orchard")),
        ("presence", "error", "romeo@example.com", "",
         Publish(Family.ROUTE, "romeo@example.com", "romeo@example.com")),
        ("presence", "error", "romeo@remote.example", "",
         Publish(Family.ROUTE, "juliet@example.com", "romeo@remote.example")),
        ("presence", "probe", "romeo@example.com", "", Drop("presence probe from a client")),
    ],
)
def test_from_client(
    kind: str, type_: str, to: str | None, child_ns: str, expected: object
) -> None:
    assert from_client(kind, type_, _jid(to), JULIET, DOMAIN, child_ns) == expected


def test_from_client_another_accounts_roster_goes_to_the_router() -> None:
    # §8.5.2.1.3: an IQ to someone else's bare JID is that account's (via its router)
    where = from_client("iq", "get", _jid("romeo@example.com"), JULIET, DOMAIN, ns.ROSTER)
    assert where == Publish(Family.ROUTE, "romeo@example.com", "romeo@example.com")


@pytest.mark.parametrize(
    ("kind", "type_", "to", "expected"),
    [
        ("presence", "subscribe", "juliet@example.com/balcony",
         Publish(Family.ROSTER, "juliet@example.com", "juliet@example.com")),
        ("presence", "probe", "juliet@example.com",
         Publish(Family.PRESENCE, "juliet@example.com", "juliet@example.com")),
        ("presence", "", "juliet@example.com/balcony",
         Publish(Family.ROUTE, "juliet@example.com", "juliet@example.com/balcony")),
        ("iq", "get", "example.com", ToServer(addressed=True)),
        ("message", "chat", "juliet@example.com",
         Publish(Family.ROUTE, "juliet@example.com", "juliet@example.com")),
    ],
)
def test_from_peer(kind: str, type_: str, to: str, expected: object) -> None:
    assert from_peer(kind, type_, JID.parse(to)) == expected


def test_publish_subject_is_the_partition_of_its_key() -> None:
    where = Publish(Family.ROSTER, "juliet@example.com", "x")
    assert where.subject(64) == subjects.roster(subjects.partition("juliet@example.com", 64))


SERVICES = {"conference.example.com": "muc", "pubsub.example.com": "pubsub",
            "upload.example.com": "upload", "bot.example.com": "component"}


@pytest.mark.parametrize(
    ("kind", "type_", "to", "expected"),
    [
        # a room's messages and IQs go to the muc service's partition of the room
        ("message", "groupchat", "room@conference.example.com", Publish(
            Family.MUC, "room@conference.example.com", "room@conference.example.com")),
        ("iq", "get", "room@conference.example.com/nick", Publish(
            Family.MUC, "room@conference.example.com", "room@conference.example.com/nick")),
        ("iq", "set", "pubsub.example.com", Publish(
            Family.PUBSUB, "pubsub.example.com", "pubsub.example.com")),
        # directed presence (a join) passes the presence service first (RFC 6121 §4.6:
        # it remembers whom to send unavailable to), which routes it on
        ("presence", "", "room@conference.example.com/nick", Publish(
            Family.PRESENCE, "juliet@example.com", "room@conference.example.com/nick")),
        # XEP-0363 slot requests go to the upload service
        ("iq", "get", "upload.example.com", Publish(
            Family.UPLOAD, "upload.example.com", "upload.example.com")),
        # XEP-0114: anything for a component's domain goes to the component
        ("message", "chat", "weather@bot.example.com", Publish(
            Family.COMPONENT, "weather@bot.example.com", "weather@bot.example.com")),
        ("iq", "get", "bot.example.com", Publish(
            Family.COMPONENT, "bot.example.com", "bot.example.com")),
        # a domain that only looks alike is remote
        ("message", "chat", "room@conference.example.org", Publish(
            Family.ROUTE, "juliet@example.com", "room@conference.example.org")),
    ],
)
def test_client_stanzas_to_local_service_domains(kind, type_, to, expected) -> None:
    got = from_client(kind, type_, JID.parse(to), JULIET, DOMAIN, "", SERVICES)
    assert got == expected


def test_requests_about_a_node_of_the_pubsub_domain_go_to_the_nodes_partition() -> None:
    service = JID.parse("pubsub.example.com")
    keyed = [from_client("iq", type_, service, JULIET, DOMAIN, ns.PUBSUB, SERVICES, node)
             for type_, node in (("set", "n1"), ("get", "n1"), ("set", "n2"))]
    assert keyed[0] == keyed[1] == Publish(Family.PUBSUB, node_key("pubsub.example.com", "n1"),
                                           "pubsub.example.com")
    assert keyed[2].key == "pubsub.example.com/n2"
    # a remote entity's request names the same partition as a local one (per-node order)
    assert from_peer("iq", "set", service, SERVICES, "n1") == keyed[0]
    # many nodes spread over the partitions instead of one
    parts = {Publish(Family.PUBSUB, node_key("pubsub.example.com", f"sensor-{i}"), "")
             .subject(64) for i in range(200)}
    assert len(parts) > 32
    # node-less requests and answers (to its caps queries) stay on the domain's partition
    for type_, node in (("get", ""), ("result", "n1"), ("error", "n1")):
        got = from_client("iq", type_, service, JULIET, DOMAIN, ns.PUBSUB, SERVICES, node)
        assert got == Publish(Family.PUBSUB, "pubsub.example.com", "pubsub.example.com")
    # rooms are not nodes: the muc service keeps the room's partition
    room = JID.parse("room@conference.example.com")
    assert from_client("iq", "get", room, JULIET, DOMAIN, ns.DISCO_INFO, SERVICES, "x").key \
        == "room@conference.example.com"


@pytest.mark.parametrize("kind", ["message", "presence", "iq"])
def test_peer_stanzas_to_local_service_domains(kind) -> None:
    # a remote occupant's presence too: the room tracks remote occupants itself
    to = JID.parse("room@conference.example.com/nick")
    got = from_peer(kind, "", to, SERVICES)
    assert got == Publish(Family.MUC, "room@conference.example.com", str(to))
    assert got.subject(8) == subjects.muc(subjects.partition("room@conference.example.com", 8))


@pytest.mark.parametrize(
    ("kind", "type_", "to", "expected"),
    [
        # XEP-0163 §4.3, §6.2: a remote contact's available and unavailable presence to an
        # account reaches the account's PEP service too (its caps)
        ("presence", "", "juliet@example.com", Publish(
            Family.PUBSUB, "juliet@example.com", "juliet@example.com")),
        ("presence", "unavailable", "juliet@example.com/balcony", Publish(
            Family.PUBSUB, "juliet@example.com", "juliet@example.com")),
        # not subscriptions, probes, errors, other stanzas, rooms or the server
        ("presence", "subscribe", "juliet@example.com", None),
        ("presence", "probe", "juliet@example.com", None),
        ("presence", "error", "juliet@example.com", None),
        ("message", "", "juliet@example.com", None),
        ("presence", "", "room@conference.example.com/nick", None),
        ("presence", "", "example.com", None),
    ],
)
def test_peer_presence_copied_to_pep(kind, type_, to, expected) -> None:
    assert peer_presence_to_pep(kind, type_, JID.parse(to), SERVICES) == expected


@pytest.mark.parametrize(
    ("type_", "to", "child_ns", "expected"),
    [
        # XEP-0163 §4.1: a publish with no 'to' is for the user's own PEP service
        ("set", None, ns.PUBSUB, Publish(Family.PUBSUB, "juliet@example.com",
                                         "juliet@example.com")),
        ("set", "juliet@example.com", ns.PUBSUB_OWNER,
         Publish(Family.PUBSUB, "juliet@example.com", "juliet@example.com")),
        # XEP-0163 §4.3: a contact's items, from the contact's PEP service (its partition)
        ("get", "romeo@example.com", ns.PUBSUB,
         Publish(Family.PUBSUB, "romeo@example.com", "romeo@example.com")),
        # a full JID, the domain, another domain, a result: not PEP
        ("get", "romeo@example.com/orchard", ns.PUBSUB,
         Publish(Family.ROUTE, "romeo@example.com", "romeo@example.com/orchard")),
        ("get", "example.com", ns.PUBSUB, ToServer(addressed=True)),
        ("get", "romeo@remote.example", ns.PUBSUB,
         Publish(Family.ROUTE, "juliet@example.com", "romeo@remote.example")),
        ("result", "romeo@example.com", ns.PUBSUB,
         Publish(Family.ROUTE, "romeo@example.com", "romeo@example.com")),
    ],
)
def test_pep_requests_go_to_the_owners_pubsub_partition(type_, to, child_ns, expected) -> None:
    assert from_client("iq", type_, _jid(to), JULIET, DOMAIN, child_ns, SERVICES) == expected


@pytest.mark.parametrize(
    ("child_ns", "family"),
    [(ns.PUBSUB, Family.PUBSUB), (ns.PUBSUB_OWNER, Family.PUBSUB), (ns.VCARD, Family.ROSTER),
     (ns.DISCO_INFO, Family.ROSTER), ("", Family.ROSTER)],
)
def test_account_family_of_an_iq_at_the_router(child_ns: str, family: Family) -> None:
    # RFC 6121 §8.5.2.1.3 on the account's behalf: a peer's PEP request reaches the router
    # of the bare JID like any IQ, which hands it to the PEP owner's pubsub partition
    assert account_family(child_ns) is family


def test_component_publishes_on_the_subject_of_its_domain() -> None:
    where = Publish(Family.COMPONENT, "weather@bot.example.com", "weather@bot.example.com/x")
    assert where.subject(64) == subjects.component("bot.example.com")
    assert where.subject(64) == Publish(Family.COMPONENT, "bot.example.com", "").subject(8)
