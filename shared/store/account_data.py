"""What an account keeps besides its keys and roster, in PostgreSQL: its vCard (XEP-0054),
private XML storage (XEP-0049) and block list (XEP-0191).

`routing` is the router's cache fill: whether each bare JID is an account and what it
blocks, for every miss of a batch in one query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from shared.store.pg.database import Database

_ROUTING: Final = """
SELECT j.jid, a.jid IS NOT NULL AS exists,
       coalesce((SELECT array_agg(b.jid) FROM blocklist b WHERE b.owner = j.jid), '{}') AS blocked
FROM unnest($1::text[]) AS j(jid) LEFT JOIN accounts a ON a.jid = j.jid
"""


class AccountDataStore:
    def __init__(self, db: Database, service: str) -> None:
        self._db = db
        self._service = service

    # ---- vCard-temp (XEP-0054) ----

    async def vcard(self, bare: str) -> bytes | None:
        raw = await self._db.fetchval(
            "vcard_get", "SELECT vcard FROM vcards WHERE owner = $1", bare)
        return bytes(raw) if raw is not None else None

    async def set_vcard(self, bare: str, data: bytes) -> None:
        await self._db.execute(
            "vcard_set",
            "INSERT INTO vcards (owner, vcard) VALUES ($1, $2) ON CONFLICT (owner) "
            "DO UPDATE SET vcard = excluded.vcard, updated_at = now()", bare, data)

    # ---- private XML storage (XEP-0049) ----

    async def private(self, bare: str, namespace: str) -> bytes | None:
        raw = await self._db.fetchval(
            "private_get",
            "SELECT element FROM private_storage WHERE owner = $1 AND namespace = $2",
            bare, namespace)
        return bytes(raw) if raw is not None else None

    async def set_private(self, bare: str, namespace: str, data: bytes, max_namespaces: int
                          ) -> bool:
        """Store one namespace's element; False (nothing stored) when the account already
        has `max_namespaces` others."""
        stored = await self._db.fetchval(
            "private_set",
            "INSERT INTO private_storage (owner, namespace, element) SELECT $1, $2, $3 "
            "WHERE EXISTS (SELECT 1 FROM private_storage WHERE owner = $1 AND namespace = $2) "
            "OR (SELECT count(*) FROM private_storage WHERE owner = $1) < $4 "
            "ON CONFLICT (owner, namespace) DO UPDATE SET element = excluded.element "
            "RETURNING true", bare, namespace, data, max_namespaces)
        return bool(stored)

    # ---- block list (XEP-0191) ----

    async def blocklist(self, bare: str) -> list[str]:
        rows = await self._db.fetch(
            "block_get", "SELECT jid FROM blocklist WHERE owner = $1 ORDER BY jid", bare)
        return [r["jid"] for r in rows]

    async def block(self, bare: str, jids: Sequence[str], max_items: int) -> list[str] | None:
        """Add `jids`; the ones newly blocked, or None (nothing added) when the list would
        grow past `max_items`."""
        async with self._db.transaction("block_add") as conn:
            have = await conn.fetchval("SELECT count(*) FROM blocklist WHERE owner = $1", bare)
            if have + len(jids) > max_items:
                return None
            rows = await conn.fetch(
                "INSERT INTO blocklist (owner, jid) SELECT $1, unnest($2::text[]) "
                "ON CONFLICT DO NOTHING RETURNING jid", bare, list(jids))
        return [r["jid"] for r in rows]

    async def unblock(self, bare: str, jids: Sequence[str]) -> None:
        """Remove `jids`; all of them when `jids` is empty (XEP-0191 §3.4)."""
        if jids:
            await self._db.execute(
                "block_remove", "DELETE FROM blocklist WHERE owner = $1 AND jid = ANY($2::text[])",
                bare, list(jids))
        else:
            await self._db.execute("block_remove", "DELETE FROM blocklist WHERE owner = $1", bare)

    # ---- the router's cache fill ----

    async def routing(self, bares: Sequence[str]) -> list[tuple[bool, frozenset[str]]]:
        """(is an account, its block list) of each bare JID, in one query."""
        rows = await self._db.fetch("account_routing", _ROUTING, list(bares))
        found = {r["jid"]: (bool(r["exists"]), frozenset(r["blocked"])) for r in rows}
        return [found.get(b, (False, frozenset())) for b in bares]
