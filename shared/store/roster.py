"""Rosters (RFC 6121 §2) with versioning (§2.6) and subscription states (Appendix A), in
PostgreSQL (tables of shared/store/pg/migrations.py).

Every change of one user's roster is made by the one roster-service process that owns the
user's partition; each change is one statement (version bump, item, tombstone), so it is
atomic without a lock.  Readers (the presence service) only read.  The JSON form of an item
(`RosterItem.encode`) is what the load tools and older Redis data use (`decode_items`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final
from xml.sax.saxutils import escape, quoteattr

import asyncpg

from shared.store.pg.database import Database
from shared.xmpp import ns
from shared.xmpp.subscription import State, Subscription

ROSTER_NS: Final = "jabber:iq:roster"
# The first version an imported roster's items get at the least: above any counter another
# server (Prosody counts from 1) can have handed a client, so a version cached there is
# older than every imported item and the client gets them all (RFC 6121 §2.6.3).
IMPORT_VERSION_BASE: Final = 1 << 32


@dataclass(frozen=True, slots=True)
class RosterItem:
    jid: str
    name: str | None = None
    groups: tuple[str, ...] = ()
    state: State = field(default_factory=State)
    hidden: bool = False  # only a pending inbound request: not shown to the client (§3.1.3)
    ver: int = 0

    def encode(self) -> str:
        s = self.state
        return json.dumps(
            {
                "n": self.name,
                "g": list(self.groups),
                "s": s.subscription.value,
                "o": s.pending_out,
                "i": s.pending_in,
                "a": s.approved,
                "h": self.hidden,
                "v": self.ver,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, jid: str, raw: bytes | str) -> RosterItem:
        d = json.loads(raw)
        state = State(Subscription(d["s"]), bool(d["o"]), bool(d["i"]), bool(d["a"]))
        return cls(jid, d["n"], tuple(d["g"]), state, bool(d["h"]), int(d["v"]))

    def xml(self) -> str:
        """§2.1.2: the item as the client sees it."""
        s = self.state
        attrs = f" jid={quoteattr(self.jid)} subscription={quoteattr(s.subscription.value)}"
        if self.name:
            attrs += f" name={quoteattr(self.name)}"
        if s.pending_out:
            attrs += ' ask="subscribe"'
        if s.approved:
            attrs += ' approved="true"'
        groups = "".join(f"<group>{escape(g)}</group>" for g in self.groups)
        return f"<item{attrs}>{groups}</item>" if groups else f"<item{attrs}/>"


def push_iq(full: str, ver: int, item_xml: str) -> bytes:
    """§2.1.6: a roster push of one item to one resource, carrying the new version (§2.6)."""
    return (
        f'<iq xmlns="{ns.CLIENT}" type="set" id="push{secrets.token_hex(4)}" '
        f'to={quoteattr(full)}><query xmlns="{ROSTER_NS}" ver="{ver}">{item_xml}'
        "</query></iq>"
    ).encode()


_ITEM_COLUMNS: Final = (
    "contact, name, groups, subscription, pending_out, pending_in, approved, hidden, version"
)


def _item(row: asyncpg.Record) -> RosterItem:
    state = State(Subscription(row["subscription"]), row["pending_out"], row["pending_in"],
                  row["approved"])
    return RosterItem(row["contact"], row["name"], tuple(row["groups"]), state, row["hidden"],
                      int(row["version"]))


# The start of every statement that changes a roster: its version, bumped (§2.6).
_BUMP_VERSION: Final = """WITH v AS (
    INSERT INTO roster_versions (owner, version) VALUES ($1, 1)
    ON CONFLICT (owner) DO UPDATE SET version = roster_versions.version + 1
    RETURNING version
)"""

# One statement (atomic, one round trip): bump the roster version, store the item under it,
# drop its tombstone.  $1 owner, $2 contact, $3 name, $4 groups, $5 subscription, $6 pending
# out, $7 pending in, $8 approved, $9 hidden.
_PUT: Final = f"""
{_BUMP_VERSION}, i AS (
    INSERT INTO roster_items (owner, contact, name, groups, subscription, pending_out,
                              pending_in, approved, hidden, version)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, v.version FROM v
    ON CONFLICT (owner, contact) DO UPDATE SET name = excluded.name, groups = excluded.groups,
        subscription = excluded.subscription, pending_out = excluded.pending_out,
        pending_in = excluded.pending_in, approved = excluded.approved,
        hidden = excluded.hidden, version = excluded.version
    RETURNING version
), t AS (
    DELETE FROM roster_tombstones WHERE owner = $1 AND contact = $2
)
SELECT version FROM i
"""

# Bump the version, remove the item, leave a tombstone at that version (§2.6.3 diffs).
_REMOVE: Final = f"""
{_BUMP_VERSION}, d AS (
    DELETE FROM roster_items WHERE owner = $1 AND contact = $2
), t AS (
    INSERT INTO roster_tombstones (owner, contact, version) SELECT $1, $2, version FROM v
    ON CONFLICT (owner, contact) DO UPDATE SET version = excluded.version
)
SELECT version FROM v
"""


class RosterStore:
    """Rosters in PostgreSQL (the store of record): one row per item, a version per user and
    a tombstone per removed item."""

    def __init__(self, db: Database, service: str) -> None:
        self._db = db
        self._service = service

    async def load(self, bare: str) -> tuple[int, dict[str, RosterItem], dict[str, int]]:
        """(version, items by contact, removed contacts -> version removed)."""
        async with self._db.connection("roster_load") as conn:
            ver = await conn.fetchval(
                "SELECT version FROM roster_versions WHERE owner = $1", bare)
            rows = await conn.fetch(
                f"SELECT {_ITEM_COLUMNS} FROM roster_items WHERE owner = $1", bare)
            tombs = await conn.fetch(
                "SELECT contact, version FROM roster_tombstones WHERE owner = $1", bare)
        return (
            int(ver or 0),
            {r["contact"]: _item(r) for r in rows},
            {r["contact"]: int(r["version"]) for r in tombs},
        )

    async def items(self, bare: str) -> dict[str, RosterItem]:
        """The items alone, by contact (what presence broadcast needs)."""
        rows = await self._db.fetch(
            "roster_items", f"SELECT {_ITEM_COLUMNS} FROM roster_items WHERE owner = $1", bare)
        return {r["contact"]: _item(r) for r in rows}

    async def item(self, bare: str, contact: str) -> RosterItem | None:
        row = await self._db.fetchrow(
            "roster_item",
            f"SELECT {_ITEM_COLUMNS} FROM roster_items WHERE owner = $1 AND contact = $2",
            bare, contact)
        return _item(row) if row else None

    async def items_of(self, pairs: list[tuple[str, str]]) -> list[RosterItem | None]:
        """Several (user, contact) items in one query."""
        if not pairs:
            return []
        rows = await self._db.fetch(
            "roster_items",
            f"SELECT owner, {_ITEM_COLUMNS} FROM roster_items "
            "JOIN unnest($1::text[], $2::text[]) AS p(owner, contact) USING (owner, contact)",
            [u for u, _ in pairs], [c for _, c in pairs])
        found = {(r["owner"], r["contact"]): _item(r) for r in rows}
        return [found.get(pair) for pair in pairs]

    async def put(self, bare: str, item: RosterItem) -> RosterItem:
        """Store an item under a new roster version; returns it with that version."""
        s = item.state
        ver = await self._db.fetchval(
            "roster_put", _PUT, bare, item.jid, item.name, list(item.groups),
            s.subscription.value, s.pending_out, s.pending_in, s.approved, item.hidden)
        return replace(item, ver=int(ver))

    async def remove(self, bare: str, contact: str) -> int:
        return int(await self._db.fetchval("roster_remove", _REMOVE, bare, contact))

    async def import_items(self, bare: str, items: Sequence[RosterItem]) -> list[RosterItem]:
        """Store imported items, replacing those already there (items not given are left
        alone), in one transaction; returns them with their versions.

        Each item gets a version of its own, in order, from max(current, IMPORT_VERSION_BASE)
        + 1, so a push per item (§2.1.6) leaves a client's cached version right after each
        one; the tombstones of re-added contacts go.  The roster service's single-statement
        changes (_PUT, _REMOVE) wait on the version row this takes first."""
        if not items:
            return []
        n = len(items)
        async with self._db.transaction("roster_import") as conn:
            last = int(await conn.fetchval(
                "INSERT INTO roster_versions (owner, version) VALUES ($1, $2::bigint + $3) "
                "ON CONFLICT (owner) DO UPDATE SET version = "
                "greatest(roster_versions.version, $2::bigint) + $3 RETURNING version",
                bare, IMPORT_VERSION_BASE, n))
            stored = [replace(item, hidden=False, ver=last - n + 1 + i)
                      for i, item in enumerate(items)]
            await conn.executemany(
                "INSERT INTO roster_items (owner, contact, name, groups, subscription, "
                "pending_out, pending_in, approved, hidden, version) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, false, $9) "
                "ON CONFLICT (owner, contact) DO UPDATE SET name = excluded.name, "
                "groups = excluded.groups, subscription = excluded.subscription, "
                "pending_out = excluded.pending_out, pending_in = excluded.pending_in, "
                "approved = excluded.approved, hidden = false, version = excluded.version",
                [(bare, i.jid, i.name, list(i.groups), i.state.subscription.value,
                  i.state.pending_out, i.state.pending_in, i.state.approved, i.ver)
                 for i in stored])
            await conn.execute(
                "DELETE FROM roster_tombstones WHERE owner = $1 AND contact = ANY($2::text[])",
                bare, [i.jid for i in stored])
        return stored

    async def count(self, bare: str) -> int:
        return int(await self._db.fetchval(
            "roster_count", "SELECT count(*) FROM roster_items WHERE owner = $1", bare))


def decode_items(raw: dict[bytes, bytes]) -> dict[str, RosterItem]:
    """The roster hash as Redis returns it, by contact."""
    return {k.decode(): RosterItem.decode(k.decode(), v) for k, v in raw.items()}
