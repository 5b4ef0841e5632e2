"""Presence state in Redis: the last available presence of each resource and directed
presence targets (RFC 6121 §4.6); offline messages (XEP-0160) in PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Final

import redis.asyncio as aioredis

from shared.store import keys
from shared.store.pg.database import Database
from shared.store.redis import timed
from shared.store.roster import RosterItem, RosterStore
from shared.store.sessions import OWNED_LUA, SessionRecord

# Broadcast available presence, the writes it starts with, in one script (all keys of one
# bare JID, one hash slot).  KEYS: sessions, sessions version, presence.  ARGV: resource,
# expected "<cm_id> <sid>" ("" leaves the session table alone), new session record, presence
# stanza.  Returns {session version (0: unchanged), 1 if the resource was not available
# before}.
_GO_AVAILABLE: Final = OWNED_LUA + """
local version = 0
if ARGV[2] ~= '' then
  if owned(redis.call('HGET', KEYS[1], ARGV[1]), ARGV[2]) then
    redis.call('HSET', KEYS[1], ARGV[1], merged(redis.call('HGET', KEYS[1], ARGV[1]), ARGV[3]))
    version = redis.call('INCR', KEYS[2])
  end
end
local new = redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return {version, new}
"""


# Append unless the queue holds `cap` already: the new length, or no row when full.  One
# statement; only the router that owns the user's partition writes it.
_STORE_CAPPED: Final = """
WITH n AS (SELECT count(*) AS n FROM offline_messages WHERE owner = $1)
INSERT INTO offline_messages (owner, stanza) SELECT $1, $2 FROM n WHERE n.n < $3
RETURNING (SELECT n + 1 FROM n)
"""


class OfflineStore:
    """Messages kept for an account with no available resource (XEP-0160), oldest first."""

    def __init__(self, db: Database, service: str) -> None:
        self._db = db
        self._service = service

    async def store(self, bare: str, payload: bytes, cap: int) -> int:
        """Queue length after storing, or 0 when the queue is full."""
        return int(await self._db.fetchval("offline_store", _STORE_CAPPED, bare, payload, cap)
                   or 0)

    async def take_all(self, bare: str) -> list[bytes]:
        """Every stored message, oldest first, removed atomically."""
        rows = await self._db.fetch(
            "offline_take",
            "DELETE FROM offline_messages WHERE owner = $1 RETURNING id, stanza", bare)
        return [bytes(r["stanza"]) for r in sorted(rows, key=lambda r: r["id"])]

    async def count(self, bare: str) -> int:
        return int(await self._db.fetchval(
            "offline_count", "SELECT count(*) FROM offline_messages WHERE owner = $1", bare))


class PresenceStore:
    def __init__(self, redis: aioredis.Redis, rosters: RosterStore, service: str) -> None:
        self._r = redis
        self._rosters = rosters
        self._service = service
        self._go_available = redis.register_script(_GO_AVAILABLE)

    async def go_available(
        self, full: str, record: SessionRecord | None, payload: bytes
    ) -> tuple[int, bool, dict[str, RosterItem]]:
        """What broadcast available presence starts with: the session's record updated if
        this session still owns the resource (`SessionStore.update`) and the presence
        remembered (`set_available`), in one Redis script, while the user's roster items are
        read from PostgreSQL (both at once).

        (session version, 0 when unchanged; True when the resource was not available
        before; the roster items by contact)."""
        bare, _, resource = full.partition("/")

        async def remember() -> list[int]:
            async with timed(self._service, "presence_available"):
                return list(await self._go_available(
                    keys=[keys.sessions(bare), keys.sessions_version(bare), keys.presence(bare)],
                    args=[resource, record.owner if record else "",
                          record.encode() if record else "", payload],
                ))

        (version, new), items = await asyncio.gather(remember(), self._rosters.items(bare))
        return int(version), bool(new), items

    async def set_available(self, full: str, payload: bytes) -> bool:
        """Remember a resource's presence; True when it was not available before."""
        bare, _, resource = full.partition("/")
        async with timed(self._service, "presence_set"):
            return bool(await self._r.hset(keys.presence(bare), resource, payload))

    async def set_unavailable(self, full: str) -> tuple[bool, list[str]]:
        """Forget a resource's presence; (was available, directed presence targets)."""
        bare, _, resource = full.partition("/")
        async with timed(self._service, "presence_unset"), self._r.pipeline(
            transaction=True
        ) as pipe:
            pipe.hdel(keys.presence(bare), resource)
            pipe.smembers(keys.directed_presence(full))
            pipe.delete(keys.directed_presence(full))
            removed, targets, _ = await pipe.execute()
        return bool(removed), sorted(t.decode() for t in targets)

    async def available(self, bares: list[str]) -> list[dict[str, bytes]]:
        """resource -> presence stanza of every available resource, per bare JID."""
        async with timed(self._service, "presence_get"), self._r.pipeline(
            transaction=False
        ) as pipe:
            for bare in bares:
                pipe.hgetall(keys.presence(bare))
            replies = await pipe.execute()
        return [{k.decode(): v for k, v in r.items()} for r in replies]

    async def directed(self, full: str, target: str, available: bool) -> None:
        key = keys.directed_presence(full)
        if available:
            await self._r.sadd(key, target)
        else:
            await self._r.srem(key, target)


class LastActivityStore:
    """XEP-0012 §4: when an account's last available resource went unavailable, and the
    status it left with; written by the presence service, read for contacts who ask."""

    def __init__(self, db: Database, service: str) -> None:
        self._db = db
        self._service = service

    async def went_away(self, bare: str, status: str) -> None:
        await self._db.execute(
            "last_set",
            "INSERT INTO last_activity (owner, seen_at, status) VALUES ($1, now(), $2) "
            "ON CONFLICT (owner) DO UPDATE SET seen_at = now(), status = excluded.status",
            bare, status)

    async def seconds_since(self, bare: str) -> tuple[int, str] | None:
        """(whole seconds since, status), or None when never recorded."""
        row = await self._db.fetchrow(
            "last_get",
            "SELECT extract(epoch FROM now() - seen_at)::bigint AS seconds, status "
            "FROM last_activity WHERE owner = $1", bare)
        if row is None:
            return None
        return max(0, int(row["seconds"])), str(row["status"])
