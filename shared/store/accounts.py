"""Accounts: the salted SCRAM keys of each user, never a password (RFC 5802 §3)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

import redis.asyncio as aioredis

from shared.store import keys
from shared.store.redis import timed
from shared.xmpp.credentials import StoredCredentials, from_redis_hash, to_redis_hash

IMPORT_PIPELINE: Final = 500  # accounts per pipeline of `create_many`


class AccountExists(Exception):
    """An account with that JID already exists."""


class AccountStore:
    def __init__(self, redis: aioredis.Redis, service: str) -> None:
        self._r = redis
        self._service = service

    async def create(self, bare_jid: str, creds: StoredCredentials) -> None:
        key = keys.account(bare_jid)
        async with timed(self._service, "account_create"):
            # HSETNX on the creation stamp is the atomic "does not exist yet" guard.
            if not await self._r.hsetnx(key, "created", str(int(time.time()))):
                raise AccountExists(bare_jid)
            await self._r.hset(key, mapping=to_redis_hash(creds))
            local, _, domain = bare_jid.rpartition("@")
            await self._r.sadd(keys.accounts(domain), local)

    async def create_many(self, accounts: Sequence[tuple[str, StoredCredentials]]) -> list[bool]:
        """Create accounts in bulk, never overwriting one: per account, whether it was created
        (False: it existed).  The same guard as `create` (HSETNX on the creation stamp), in
        two pipelines per `IMPORT_PIPELINE` accounts rather than three round trips each."""
        created: list[bool] = []
        stamp = str(int(time.time()))
        for start in range(0, len(accounts), IMPORT_PIPELINE):
            chunk = accounts[start:start + IMPORT_PIPELINE]
            async with self._r.pipeline(transaction=False) as pipe:
                for bare_jid, _ in chunk:
                    pipe.hsetnx(keys.account(bare_jid), "created", stamp)
                async with timed(self._service, "account_import"):
                    won = [bool(n) for n in await pipe.execute()]
            by_domain: dict[str, list[str]] = {}
            async with self._r.pipeline(transaction=False) as pipe:
                for (bare_jid, creds), new in zip(chunk, won, strict=True):
                    if new:
                        pipe.hset(keys.account(bare_jid), mapping=to_redis_hash(creds))
                        local, _, domain = bare_jid.rpartition("@")
                        by_domain.setdefault(domain, []).append(local)
                for domain, names in by_domain.items():
                    pipe.sadd(keys.accounts(domain), *names)
                if by_domain:
                    async with timed(self._service, "account_import"):
                        await pipe.execute()
            created += won
        return created

    async def set_credentials(self, bare_jid: str, creds: StoredCredentials) -> bool:
        key = keys.account(bare_jid)
        if not await self._r.exists(key):
            return False
        await self._r.hset(key, mapping=to_redis_hash(creds))
        return True

    async def credentials(self, bare_jid: str) -> StoredCredentials | None:
        async with timed(self._service, "account_get"):
            raw = await self._r.hgetall(keys.account(bare_jid))
        if not raw or b"sha256_stored" not in raw:
            return None
        return from_redis_hash(raw)

    async def exists(self, bare_jid: str) -> bool:
        return bool(await self._r.exists(keys.account(bare_jid)))

    async def delete(self, bare_jid: str) -> bool:
        local, _, domain = bare_jid.rpartition("@")
        removed = await self._r.delete(keys.account(bare_jid))
        await self._r.srem(keys.accounts(domain), local)
        return bool(removed)

    async def list(self, domain: str) -> list[str]:
        members = await self._r.smembers(keys.accounts(domain))
        return sorted(f"{m.decode()}@{domain}" for m in members)
