"""Publish-subscribe nodes and items in PostgreSQL (XEP-0060, XEP-0163).

A *service* is the bare JID of a user's personal eventing service or the domain of a
generic pubsub service; its nodes are written only by the pubsub process that owns the
service's partition (shared/cluster/partitioned.py), so a node's items keep the order of
their publishes.  Other processes may read (the last published item of a contact's nodes
when a user comes online).  Items are ordered by ``seq`` (a republished id moves to the end).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from shared.store.pg.database import Database


@dataclass(frozen=True, slots=True)
class Node:
    service: str
    name: str
    creator: str
    config: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    publisher: str
    payload: bytes  # the item's payload element, serialised ("": none)
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Subscription:
    jid: str
    subid: str
    state: str  # subscribed, pending, unconfigured (XEP-0060 §4.2)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Publish:
    """One item to store (`PubsubStore.publish_many`); ``max_items`` trims the node after."""

    service: str
    node: str
    item: Item
    max_items: int


@dataclass(frozen=True, slots=True)
class LastItem:
    """The newest item of a node, with the node (`PubsubStore.last_items`)."""

    node: Node
    item: Item


_LIVE: Final = "($EXPIRE = 0 OR published_at > now() - make_interval(secs => $EXPIRE))"


def _live(param: int) -> str:
    """Items not older than the node's pubsub#item_expire (in seconds, 0: for ever)."""
    return _LIVE.replace("$EXPIRE", f"${param}")


# How long a node's subscription count is trusted, and the share of the limit below which a
# subscribe skips the exact count (`PubsubStore.subscribe`).
COUNT_TTL_S: Final = 30.0
COUNT_HEADROOM: Final = 0.9
COUNTS_KEPT: Final = 10_000  # nodes whose count is remembered (then all are forgotten)


class PubsubStore:
    def __init__(self, db: Database, service: str) -> None:
        self._db = db
        self._service = service
        # (service, node) -> (subscriptions counted or added since, when counted)
        self._counts: dict[tuple[str, str], tuple[int, float]] = {}

    # ---- nodes -------------------------------------------------------------------------------

    async def node(self, service: str, name: str) -> Node | None:
        row = await self._db.fetchrow(
            "pubsub_node",
            "SELECT creator, config FROM pubsub_nodes WHERE service = $1 AND node = $2",
            service, name)
        if row is None:
            return None
        return Node(service, name, row["creator"], json.loads(row["config"]))

    async def nodes(self, service: str, limit: int) -> list[str]:
        rows = await self._db.fetch(
            "pubsub_nodes",
            "SELECT node FROM pubsub_nodes WHERE service = $1 ORDER BY node LIMIT $2",
            service, limit)
        return [r["node"] for r in rows]

    async def count_nodes(self, service: str) -> int:
        return int(await self._db.fetchval(
            "pubsub_count_nodes", "SELECT count(*) FROM pubsub_nodes WHERE service = $1",
            service))

    async def create(self, service: str, name: str, creator: str, config: dict[str, Any]
                     ) -> bool:
        """Create the node with its creator as owner; False when it exists (§8.1.3)."""
        async with self._db.transaction("pubsub_create") as conn:
            created = await conn.fetchval(
                "INSERT INTO pubsub_nodes (service, node, creator, config) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
                service, name, creator, json.dumps(config))
            if not created:
                return False
            await conn.execute(
                "INSERT INTO pubsub_affiliations (service, node, jid, affiliation) "
                "VALUES ($1, $2, $3, 'owner')", service, name, creator)
        return True

    async def configure(self, service: str, name: str, config: dict[str, Any]) -> None:
        await self._db.execute(
            "pubsub_configure",
            "UPDATE pubsub_nodes SET config = $3 WHERE service = $1 AND node = $2",
            service, name, json.dumps(config))

    async def delete(self, service: str, name: str) -> bool:
        """The node with its items, affiliations and subscriptions (§8.4)."""
        return bool(await self._db.fetchval(
            "pubsub_delete",
            "DELETE FROM pubsub_nodes WHERE service = $1 AND node = $2 RETURNING true",
            service, name))

    # ---- items -------------------------------------------------------------------------------

    async def publish_many(self, publishes: Sequence[Publish]) -> None:
        """Store items (a tick's publishes, in order) and trim each node to its max_items,
        in one transaction."""
        if not publishes:
            return
        async with self._db.transaction("pubsub_publish") as conn:
            await conn.executemany(
                "INSERT INTO pubsub_items (service, node, item_id, publisher, payload) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (service, node, item_id) DO UPDATE "
                "SET publisher = excluded.publisher, payload = excluded.payload, "
                "seq = nextval('pubsub_item_seq'), published_at = now()",
                [(p.service, p.node, p.item.id, p.item.publisher, p.item.payload)
                 for p in publishes])
            trims = {(p.service, p.node): p.max_items for p in publishes}
            await conn.executemany(
                "DELETE FROM pubsub_items WHERE service = $1 AND node = $2 AND seq < ("
                "SELECT min(seq) FROM (SELECT seq FROM pubsub_items WHERE service = $1 "
                "AND node = $2 ORDER BY seq DESC LIMIT $3) AS kept)",
                [(s, n, m) for (s, n), m in trims.items()])

    async def items(self, service: str, name: str, *, ids: Sequence[str] = (),
                    last: int = 0, after: str | None = None, before: str | None = None,
                    expire_s: int = 0) -> list[Item]:
        """Items oldest first: those of ``ids``, or the ``last`` newest (0: all), or (RSM,
        XEP-0059) the first ``last`` after the item ``after`` / the last before ``before``."""
        cols = "item_id, publisher, payload, seq"
        where = f"service = $1 AND node = $2 AND {_live(3)}"
        if ids:
            rows = await self._db.fetch(
                "pubsub_items_by_id",
                f"SELECT {cols} FROM pubsub_items WHERE {where} AND item_id = ANY($4) "
                "ORDER BY seq", service, name, expire_s, list(ids))
        elif after is not None:
            rows = await self._db.fetch(
                "pubsub_items_after",
                f"SELECT {cols} FROM pubsub_items WHERE {where} AND seq > coalesce(("
                "SELECT seq FROM pubsub_items WHERE service = $1 AND node = $2 AND "
                "item_id = $4), 0) ORDER BY seq LIMIT $5",
                service, name, expire_s, after, last or None)
        elif before is not None:
            rows = await self._db.fetch(
                "pubsub_items_before",
                f"SELECT * FROM (SELECT {cols} FROM pubsub_items WHERE {where} AND seq < "
                "coalesce((SELECT seq FROM pubsub_items WHERE service = $1 AND node = $2 "
                "AND item_id = $4), 9223372036854775807) ORDER BY seq DESC LIMIT $5) AS page "
                "ORDER BY seq", service, name, expire_s, before or None, last or None)
        else:
            rows = await self._db.fetch(
                "pubsub_items",
                f"SELECT * FROM (SELECT {cols} FROM pubsub_items WHERE {where} "
                "ORDER BY seq DESC LIMIT $4) AS page ORDER BY seq",
                service, name, expire_s, last or None)
        return [Item(r["item_id"], r["publisher"], bytes(r["payload"]), int(r["seq"]))
                for r in rows]

    async def count_items(self, service: str, name: str, expire_s: int = 0) -> int:
        return int(await self._db.fetchval(
            "pubsub_count_items",
            f"SELECT count(*) FROM pubsub_items WHERE service = $1 AND node = $2 "
            f"AND {_live(3)}", service, name, expire_s))

    async def retract(self, service: str, name: str, item_id: str) -> bool:
        return bool(await self._db.fetchval(
            "pubsub_retract",
            "DELETE FROM pubsub_items WHERE service = $1 AND node = $2 AND item_id = $3 "
            "RETURNING true", service, name, item_id))

    async def purge(self, service: str, name: str) -> None:
        await self._db.execute(
            "pubsub_purge", "DELETE FROM pubsub_items WHERE service = $1 AND node = $2",
            service, name)

    async def last_items(self, services: Sequence[str], nodes: Sequence[str]) -> list[LastItem]:
        """The newest item of every node named in ``nodes`` of every service in
        ``services`` (XEP-0163 §6.2 last published item), with its node."""
        if not services or not nodes:
            return []
        rows = await self._db.fetch(
            "pubsub_last_items",
            "SELECT DISTINCT ON (i.service, i.node) i.service, i.node, i.item_id, "
            "i.publisher, i.payload, i.seq, n.creator, n.config FROM pubsub_items i "
            "JOIN pubsub_nodes n USING (service, node) WHERE i.service = ANY($1) "
            "AND i.node = ANY($2) ORDER BY i.service, i.node, i.seq DESC",
            list(services), list(nodes))
        return [LastItem(Node(r["service"], r["node"], r["creator"], json.loads(r["config"])),
                         Item(r["item_id"], r["publisher"], bytes(r["payload"]), int(r["seq"])))
                for r in rows]

    # ---- affiliations (§4.1) -----------------------------------------------------------------

    async def affiliation(self, service: str, name: str, jid: str) -> str:
        found = await self._db.fetchval(
            "pubsub_affiliation",
            "SELECT affiliation FROM pubsub_affiliations WHERE service = $1 AND node = $2 "
            "AND jid = $3", service, name, jid)
        return str(found) if found else "none"

    async def affiliations(self, service: str, name: str) -> dict[str, str]:
        rows = await self._db.fetch(
            "pubsub_affiliations",
            "SELECT jid, affiliation FROM pubsub_affiliations WHERE service = $1 AND node = $2 "
            "ORDER BY jid", service, name)
        return {r["jid"]: r["affiliation"] for r in rows}

    async def affiliations_of(self, service: str, jid: str) -> dict[str, str]:
        """node -> affiliation of ``jid`` on every node of the service (§5.7)."""
        rows = await self._db.fetch(
            "pubsub_affiliations_of",
            "SELECT node, affiliation FROM pubsub_affiliations WHERE service = $1 AND jid = $2 "
            "ORDER BY node", service, jid)
        return {r["node"]: r["affiliation"] for r in rows}

    async def set_affiliations(self, service: str, name: str, changes: dict[str, str]) -> None:
        """jid -> affiliation; "none" removes it (§8.9.2)."""
        async with self._db.transaction("pubsub_set_affiliations") as conn:
            for jid, affiliation in changes.items():
                if affiliation == "none":
                    await conn.execute(
                        "DELETE FROM pubsub_affiliations WHERE service = $1 AND node = $2 "
                        "AND jid = $3", service, name, jid)
                else:
                    await conn.execute(
                        "INSERT INTO pubsub_affiliations (service, node, jid, affiliation) "
                        "VALUES ($1, $2, $3, $4) ON CONFLICT (service, node, jid) "
                        "DO UPDATE SET affiliation = excluded.affiliation",
                        service, name, jid, affiliation)

    # ---- subscriptions (§4.2) ----------------------------------------------------------------

    async def subscription(self, service: str, name: str, jid: str) -> Subscription | None:
        row = await self._db.fetchrow(
            "pubsub_subscription",
            "SELECT subid, state, options FROM pubsub_subscriptions WHERE service = $1 "
            "AND node = $2 AND jid = $3", service, name, jid)
        if row is None:
            return None
        return Subscription(jid, row["subid"], row["state"], json.loads(row["options"]))

    async def subscribe(self, service: str, name: str, sub: Subscription, limit: int) -> bool:
        """Store (or replace) a subscription; False when the node already has ``limit``
        others.

        Counting a node's subscriptions at every subscribe made filling a node quadratic
        (153 ms per count at 60,000 rows): the count is taken exactly once per COUNT_TTL_S
        and raised by each subscription added here; while it stays below COUNT_HEADROOM of
        the limit the subscription is stored without counting.  Unsubscriptions are not
        subtracted (the count errs high), and near the limit every subscribe counts."""
        key = (service, name)
        known = self._counts.get(key)
        now = time.monotonic()
        if known is not None and now - known[1] < COUNT_TTL_S and (
                known[0] + 1 < limit * COUNT_HEADROOM):
            added = await self._db.fetchval(
                "pubsub_subscribe_uncounted",
                "INSERT INTO pubsub_subscriptions (service, node, jid, subid, state, options) "
                "VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (service, node, jid) DO UPDATE SET subid = excluded.subid, "
                "state = excluded.state, options = excluded.options RETURNING (xmax = 0)",
                service, name, sub.jid, sub.subid, sub.state, json.dumps(sub.options))
            if added:
                self._counts[key] = (known[0] + 1, known[1])
            return True
        stored = await self._counted_subscribe(service, name, sub, limit)
        if len(self._counts) > COUNTS_KEPT:
            self._counts.clear()
        self._counts[key] = (await self.count_subscriptions(service, name), now)
        return stored

    async def count_subscriptions(self, service: str, name: str) -> int:
        return int(await self._db.fetchval(
            "pubsub_count_subscriptions",
            "SELECT count(*) FROM pubsub_subscriptions WHERE service = $1 AND node = $2",
            service, name))

    async def _counted_subscribe(self, service: str, name: str, sub: Subscription,
                                 limit: int) -> bool:
        stored = await self._db.fetchval(
            "pubsub_subscribe",
            "INSERT INTO pubsub_subscriptions (service, node, jid, subid, state, options) "
            "SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM pubsub_subscriptions "
            "WHERE service = $1 AND node = $2 AND jid = $3) OR (SELECT count(*) FROM "
            "pubsub_subscriptions WHERE service = $1 AND node = $2) < $7 "
            "ON CONFLICT (service, node, jid) DO UPDATE SET subid = excluded.subid, "
            "state = excluded.state, options = excluded.options RETURNING true",
            service, name, sub.jid, sub.subid, sub.state, json.dumps(sub.options), limit)
        return bool(stored)

    async def unsubscribe(self, service: str, name: str, jid: str) -> bool:
        return bool(await self._db.fetchval(
            "pubsub_unsubscribe",
            "DELETE FROM pubsub_subscriptions WHERE service = $1 AND node = $2 AND jid = $3 "
            "RETURNING true", service, name, jid))

    async def subscribers(self, service: str, name: str, after: str, limit: int
                          ) -> list[Subscription]:
        """A page of the node's subscriptions, by JID after ``after`` (fan-out reads a node
        of any size this way)."""
        rows = await self._db.fetch(
            "pubsub_subscribers",
            "SELECT jid, subid, state, options FROM pubsub_subscriptions WHERE service = $1 "
            "AND node = $2 AND jid > $3 ORDER BY jid LIMIT $4", service, name, after, limit)
        return [Subscription(r["jid"], r["subid"], r["state"], json.loads(r["options"]))
                for r in rows]

    async def subscriptions_of(self, service: str, jid: str) -> list[tuple[str, Subscription]]:
        """(node, subscription) of ``jid`` (bare or full) on every node of the service."""
        rows = await self._db.fetch(
            "pubsub_subscriptions_of",
            "SELECT node, jid, subid, state, options FROM pubsub_subscriptions "
            "WHERE service = $1 AND jid = $2 ORDER BY node", service, jid)
        return [(r["node"], Subscription(r["jid"], r["subid"], r["state"],
                                         json.loads(r["options"]))) for r in rows]
