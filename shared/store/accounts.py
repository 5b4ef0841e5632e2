"""Accounts in PostgreSQL: the salted SCRAM keys of each user, never a password (RFC 5802 §3).

`credentials` is what every login asks: the lookups of one event-loop tick go out as one
query (`shared.store.pg.batch.TickLoader`).  Deleting an account deletes its durable data
with it (roster, stored messages, vCard, private storage, block list), in one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

import asyncpg

from shared.store.pg.batch import TickLoader
from shared.store.pg.database import Database
from shared.xmpp.credentials import StoredCredentials, from_redis_hash

IMPORT_BATCH: Final = 500  # accounts per INSERT of `create_many`

_COLUMNS: Final = (
    "sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key, "
    "sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key"
)
# the tables of an account's own data, deleted with it (owner = the account's bare JID)
OWNED_TABLES: Final = ("roster_items", "roster_tombstones", "roster_versions",
                       "offline_messages", "vcards", "private_storage", "blocklist",
                       "push_registrations", "last_activity", "fast_tokens")


class AccountExists(Exception):
    """An account with that JID already exists."""


def _row(bare_jid: str, creds: StoredCredentials) -> tuple[object, ...]:
    domain = bare_jid.rpartition("@")[2]
    a, b = creds.sha1, creds.sha256
    return (bare_jid, domain, a.salt, a.iterations, a.stored_key, a.server_key,
            b.salt, b.iterations, b.stored_key, b.server_key)


def _credentials(row: asyncpg.Record) -> StoredCredentials:
    """The keys of a row, checked as `from_redis_hash` checks them (lengths, ranges)."""
    fields = {}
    for prefix in ("sha1", "sha256"):
        fields[f"{prefix}_salt"] = row[f"{prefix}_salt"]
        fields[f"{prefix}_iter"] = str(row[f"{prefix}_iterations"]).encode()
        fields[f"{prefix}_stored"] = row[f"{prefix}_stored_key"]
        fields[f"{prefix}_server"] = row[f"{prefix}_server_key"]
    return from_redis_hash(fields)


_INSERT: Final = (
    f"INSERT INTO accounts (jid, domain, {_COLUMNS}) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int[], $5::bytea[], "
    "$6::bytea[], $7::bytea[], $8::int[], $9::bytea[], $10::bytea[]) "
    "ON CONFLICT (jid) DO NOTHING RETURNING jid"
)


class AccountStore:
    def __init__(self, db: Database, service: str) -> None:
        self._db = db
        self._service = service
        self._creds: TickLoader[str, StoredCredentials | None] = TickLoader(
            self._fetch_credentials, None)
        self._exists: TickLoader[str, bool] = TickLoader(self._fetch_exists, False)

    async def create(self, bare_jid: str, creds: StoredCredentials) -> None:
        if not (await self.create_many([(bare_jid, creds)]))[0]:
            raise AccountExists(bare_jid)

    async def create_many(self, accounts: Sequence[tuple[str, StoredCredentials]]) -> list[bool]:
        """Create accounts in bulk, never overwriting one: per account, whether it was created
        (False: it existed, or came twice in `accounts`).  One INSERT per `IMPORT_BATCH`."""
        created: list[bool] = []
        for start in range(0, len(accounts), IMPORT_BATCH):
            chunk = accounts[start:start + IMPORT_BATCH]
            columns = list(zip(*(_row(jid, creds) for jid, creds in chunk), strict=True))
            rows = await self._db.fetch("account_create", _INSERT, *columns)
            new = {r["jid"] for r in rows}
            for jid, _ in chunk:
                created.append(jid in new)
                new.discard(jid)  # a second copy in the same chunk did not create it
        return created

    async def set_credentials(self, bare_jid: str, creds: StoredCredentials) -> bool:
        row = _row(bare_jid, creds)
        status = await self._db.execute(
            "account_update",
            "UPDATE accounts SET sha1_salt = $2, sha1_iterations = $3, sha1_stored_key = $4, "
            "sha1_server_key = $5, sha256_salt = $6, sha256_iterations = $7, "
            "sha256_stored_key = $8, sha256_server_key = $9 WHERE jid = $1",
            bare_jid, *row[2:])
        return status == "UPDATE 1"

    def credentials(self, bare_jid: str) -> asyncio.Future[StoredCredentials | None]:
        """The account's keys (None: no such account), batched with the tick's others."""
        return self._creds.get(bare_jid)

    async def _fetch_credentials(
        self, jids: Sequence[str]
    ) -> dict[str, StoredCredentials | None]:
        rows = await self._db.fetch(
            "account_get", f"SELECT jid, {_COLUMNS} FROM accounts WHERE jid = ANY($1::text[])",
            list(jids))
        return {r["jid"]: _credentials(r) for r in rows}

    async def exists(self, bare_jid: str) -> bool:
        return await self._exists.get(bare_jid)

    async def exists_many(self, bare_jids: Sequence[str]) -> list[bool]:
        return await self._exists.get_many(bare_jids)

    async def _fetch_exists(self, jids: Sequence[str]) -> dict[str, bool]:
        rows = await self._db.fetch(
            "account_exists", "SELECT jid FROM accounts WHERE jid = ANY($1::text[])", list(jids))
        return {r["jid"]: True for r in rows}

    async def delete(self, bare_jid: str) -> bool:
        """The account and all its durable data; False when there was no account."""
        async with self._db.transaction("account_delete") as conn:
            status = await conn.execute("DELETE FROM accounts WHERE jid = $1", bare_jid)
            for table in OWNED_TABLES:
                await conn.execute(f"DELETE FROM {table} WHERE owner = $1", bare_jid)
        return bool(status == "DELETE 1")

    async def list(self, domain: str) -> list[str]:
        rows = await self._db.fetch(
            "account_list", "SELECT jid FROM accounts WHERE domain = $1 ORDER BY jid", domain)
        return [r["jid"] for r in rows]
