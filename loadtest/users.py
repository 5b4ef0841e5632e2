"""Accounts (and rosters) created in bulk, straight into the cluster's Redis.

All users of a run share one password and one set of derived SCRAM keys: deriving is PBKDF2
and would dominate the setup; the server's work per login is the same either way (it keeps
only the keys, RFC 5802 §3).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from shared.credentials import derive_credentials, to_redis_hash
from shared.store import keys
from shared.store.roster import RosterItem
from shared.xmpp.subscription import State, Subscription

PASSWORD = "load-test-pw"
BATCH = 500  # commands per pipeline


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


async def create_accounts(redis: aioredis.Redis, users: list[User], iterations: int,
                          password: str = PASSWORD) -> None:
    mapping = to_redis_hash(derive_credentials(password, iterations))
    for start in range(0, len(users), BATCH):
        async with redis.pipeline(transaction=False) as pipe:
            for u in users[start:start + BATCH]:
                pipe.hset(keys.account(u.jid), mapping={"created": b"0", **mapping})
                local, _, domain = u.jid.rpartition("@")
                pipe.sadd(keys.accounts(domain), local)
            await pipe.execute()


async def create_rosters(redis: aioredis.Redis, users: list[User], contacts: list[list[int]]
                         ) -> None:
    """Mutual 'both' subscriptions, written as the roster service would store them."""
    both = State(Subscription.BOTH)
    for start in range(0, len(users), BATCH // 10 or 1):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(len(users), start + BATCH // 10 or 1)):
                bare = users[i].jid
                items = {users[j].jid: RosterItem(users[j].jid, state=both, ver=1).encode()
                         for j in contacts[i]}
                if items:
                    pipe.hset(keys.roster(bare), mapping=items)
                pipe.set(keys.roster_version(bare), 1)
            await pipe.execute()
