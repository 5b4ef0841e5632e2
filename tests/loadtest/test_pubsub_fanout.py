"""A tiny real run of the pubsub fan-out benchmark against the test session's cluster (a
node with 3 subscribers, a PEP avatar update to 3 contacts).  Counts are checked, timing
never is."""

from __future__ import annotations

import pytest
from lxml import etree

from loadtest import pubsub_fanout, target
from loadtest.bounds import BoundsError
from loadtest.users import User
from shared.xmpp.caps import ver_of
from tests.conftest import Users
from tests.services.pubsub.test_pep import befriend
from tests.support.cluster import Cluster

pytestmark = pytest.mark.timeout(120)


def server_of(cluster: Cluster) -> pubsub_fanout.Server:
    return pubsub_fanout.Server("stanzad", (cluster.c2s_port,), f"pubsub.{cluster.domain}",
                                lambda: target.server_pids(cluster), lambda: None)


async def some_users(users: Users, n: int) -> tuple[list[User], str]:
    made = [await users.create("ps", password="fanout-pw") for _ in range(n)]
    return [User(jid, f"r{i}") for i, (jid, _) in enumerate(made)], "fanout-pw"


def test_the_subscribers_caps_answer_hashes_to_their_ver() -> None:
    # XEP-0115 §5.4: the server trusts the ver only if the answer hashes to it
    ver, body = pubsub_fanout.disco_answer()
    query = etree.fromstring(
        f"<query xmlns='http://jabber.org/protocol/disco#info'>{body}</query>")
    assert ver_of(query, "sha-1") == ver
    assert "urn:xmpp:avatar:metadata+notify" in body


def test_bounds() -> None:
    for bad in (["--subscribers", "0"], ["--subscribers", "100001"], ["--publishes", "21"],
                ["--workers", "17"]):
        with pytest.raises(BoundsError):
            pubsub_fanout.main(bad)


async def test_a_node_with_subscribers(pubsub_cluster: Cluster, users: Users) -> None:
    """The fleet's subscribers (two worker processes) each subscribe and get every publish
    once (XEP-0060 §7.1.2: a notification to every subscriber)."""
    accounts, password = await some_users(users, 7)
    result = await pubsub_fanout.run(server_of(pubsub_cluster), "node", accounts, 3, 20,
                                     password, settle_s=0.5, workers=2)
    assert (result["workers"], result["subscribers"], result["subscribed"]) == (2, 6, 6)
    assert (result["delivered"], result["expected"]) == (18, 18)
    assert [r["delivered"] for r in result["rounds"]] == [6, 6, 6]
    assert result["duplicates"] == 0 and result["live"] == 6
    assert all(r["first_s"] <= r["median_s"] <= r["last_s"] for r in result["rounds"])


async def test_a_pep_avatar_update_to_contacts(pubsub_cluster: Cluster, users: Users) -> None:
    accounts, password = await some_users(users, 4)
    for contact in accounts[1:]:
        await befriend(users, accounts[0].jid, contact.jid)
    result = await pubsub_fanout.run(server_of(pubsub_cluster), "pep", accounts, 2, 20,
                                     password, settle_s=3)
    assert (result["delivered"], result["expected"]) == (6, 6)
