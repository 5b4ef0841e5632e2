"""Accounts created in bulk through the cluster's admin API; rosters straight into PostgreSQL.

Accounts go through ``POST /api/v1/users/import`` (issue 7: users are created through the
admin tool), in batches of the API's bound sent a few at a time.  All users of a run share
one password and one set of SCRAM keys, derived once here and sent ready (the import's
``scram`` form): deriving is PBKDF2 and would dominate the setup; the server's work per
login is the same either way (it keeps only the keys, RFC 5802 §3).

Rosters have no admin operation (the issue names only users): `create_rosters` writes them
into PostgreSQL as the roster service stores them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from services.admin.api import MAX_IMPORT
from shared.store.pg.database import Database
from shared.xmpp.credentials import derive_credentials, to_json

PASSWORD = "load-test-pw"
BATCH = 500  # commands per pipeline (rosters)
IMPORT_CONCURRENCY: Final = 4  # import requests in flight
IMPORT_TIMEOUT_S: Final = 120.0


@dataclass(frozen=True, slots=True)
class User:
    jid: str
    resource: str

    @property
    def full(self) -> str:
        return f"{self.jid}/{self.resource}"


def make_users(count: int, domain: str, prefix: str = "lt") -> list[User]:
    return [User(f"{prefix}{i}@{domain}", f"r{i}") for i in range(count)]


def ring_contacts(count: int, contacts: int) -> list[list[int]]:
    """User i's contacts: the next `contacts` users around a ring (symmetric when every
    user has the same number: i lists j exactly when j lists i, for an even split)."""
    if contacts >= count:
        raise ValueError("a roster needs fewer contacts than users")
    half, odd = divmod(contacts, 2)
    out = []
    for i in range(count):
        near = [(i + d) % count for d in range(1, half + 1)]
        near += [(i - d) % count for d in range(1, half + 1)]
        if odd:
            near.append((i + count // 2) % count)
        out.append(sorted(set(near)))
    return out


async def create_accounts(admin_url: str, token: str, users: list[User], iterations: int,
                          password: str = PASSWORD,
                          concurrency: int = IMPORT_CONCURRENCY) -> None:
    """Import every user through the admin API; raise RuntimeError unless all are created."""
    scram = to_json(derive_credentials(password, iterations))
    batches = [users[i:i + MAX_IMPORT] for i in range(0, len(users), MAX_IMPORT)]
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=IMPORT_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as http:

        async def send(batch: list[User]) -> dict[str, Any]:
            body = {"accounts": [{"jid": u.jid, "scram": scram} for u in batch]}
            async with gate, http.post(f"{admin_url}/api/v1/users/import", json=body) as resp:
                doc: dict[str, Any] = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"admin API import: {resp.status} {doc}")
                return doc

        replies = await asyncio.gather(*(send(b) for b in batches))
    created = sum(int(r["created"]) for r in replies)
    if created < len(users):
        failed = [e for r in replies for e in r["results"] if e["result"] != "created"]
        raise RuntimeError(f"admin API import: created {created}/{len(users)}: {failed[:3]}")


async def create_rosters(db: Database, users: list[User], contacts: list[list[int]]
                         ) -> None:
    """Mutual 'both' subscriptions, written as the roster service would store them (at
    roster version 1), in one INSERT per table and chunk."""
    step = BATCH // 10 or 1
    for start in range(0, len(users), step):
        owners, items = [], []
        for i in range(start, min(len(users), start + step)):
            owners.append(users[i].jid)
            items += [(users[i].jid, users[j].jid) for j in contacts[i]]
        async with db.transaction("loadtest_rosters") as conn:
            await conn.execute(
                "INSERT INTO roster_versions (owner, version) SELECT unnest($1::text[]), 1 "
                "ON CONFLICT (owner) DO UPDATE SET version = 1", owners)
            await conn.execute(
                "INSERT INTO roster_items (owner, contact, subscription, version) "
                "SELECT o, c, 'both', 1 FROM unnest($1::text[], $2::text[]) AS t(o, c) "
                "ON CONFLICT (owner, contact) DO UPDATE SET subscription = 'both', version = 1",
                [o for o, _ in items], [c for _, c in items])
