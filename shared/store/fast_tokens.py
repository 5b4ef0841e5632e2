"""FAST tokens (XEP-0484) in PostgreSQL: per (account, client) a "current" and a "new" slot,
each a token's random id and SHA-256 (shared/xmpp/fast.py), its mechanism and expiry.

A login with a token reads both slots of its client (`load`); a token is issued into "new"
(`put`, replacing a "new" one never used); a login with the "new" one makes it "current"
(`promote`, the older one goes); `revoke` deletes the tokens of an account, or of one of its
clients (the CLI, the admin API, a client's <fast invalidate/>); `purge_expired` deletes
what expired.  An account's deletion deletes its tokens (shared/store/accounts.py).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from shared.store.pg.database import Database


@dataclass(frozen=True, slots=True)
class TokenRow:
    owner: str
    client_id: str
    slot: str
    mechanism: str
    token_id: bytes
    token_hash: bytes
    user_agent: str
    created_at: datetime.datetime
    expires_at: datetime.datetime


_COLUMNS = ("owner, client_id, slot, mechanism, token_id, token_hash, user_agent, created_at, "
            "expires_at")


class FastTokenStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def load(self, owner: str, client_id: str) -> list[TokenRow]:
        rows = await self._db.fetch(
            "fast_load",
            f"SELECT {_COLUMNS} FROM fast_tokens WHERE owner = $1 AND client_id = $2 "
            "AND expires_at > now()", owner, client_id)
        return [TokenRow(**dict(r)) for r in rows]

    async def put(self, owner: str, client_id: str, mechanism: str, token_id: bytes,
                  token_hash: bytes, expires_at: datetime.datetime, user_agent: str = "") -> None:
        """A new token in the client's "new" slot (XEP-0484 §8.1)."""
        await self._db.execute(
            "fast_put",
            "INSERT INTO fast_tokens (owner, client_id, slot, mechanism, token_id, token_hash, "
            "user_agent, expires_at) VALUES ($1, $2, 'new', $3, $4, $5, $6, $7) "
            "ON CONFLICT (owner, client_id, slot) DO UPDATE SET mechanism = EXCLUDED.mechanism, "
            "token_id = EXCLUDED.token_id, token_hash = EXCLUDED.token_hash, "
            "user_agent = EXCLUDED.user_agent, created_at = now(), "
            "expires_at = EXCLUDED.expires_at",
            owner, client_id, mechanism, token_id, token_hash, user_agent[:200], expires_at)

    async def promote(self, owner: str, client_id: str) -> None:
        """The "new" token was used: it becomes "current", the older one is gone."""
        async with self._db.transaction("fast_promote") as conn:
            await conn.execute(
                "DELETE FROM fast_tokens WHERE owner = $1 AND client_id = $2 "
                "AND slot = 'current'", owner, client_id)
            await conn.execute(
                "UPDATE fast_tokens SET slot = 'current' WHERE owner = $1 AND client_id = $2 "
                "AND slot = 'new'", owner, client_id)

    async def revoke(self, owner: str, client_id: str | None = None,
                     slot: str | None = None) -> int:
        """Delete an account's tokens (of one client, of one slot); how many went."""
        status = await self._db.execute(
            "fast_revoke",
            "DELETE FROM fast_tokens WHERE owner = $1 AND ($2::text IS NULL OR client_id = $2) "
            "AND ($3::text IS NULL OR slot = $3)", owner, client_id, slot)
        return int(status.rpartition(" ")[2] or 0)

    async def list(self, owner: str) -> list[TokenRow]:
        rows = await self._db.fetch(
            "fast_list",
            f"SELECT {_COLUMNS} FROM fast_tokens WHERE owner = $1 ORDER BY client_id, slot",
            owner)
        return [TokenRow(**dict(r)) for r in rows]

    async def purge_expired(self) -> int:
        status = await self._db.execute(
            "fast_purge", "DELETE FROM fast_tokens WHERE expires_at <= now()")
        return int(status.rpartition(" ")[2] or 0)
