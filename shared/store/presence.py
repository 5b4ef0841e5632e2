"""Presence state: the last available presence of each resource, directed presence targets
(RFC 6121 §4.6) and offline messages (XEP-0160)."""

from __future__ import annotations

from typing import Final

import redis.asyncio as aioredis

from shared.store import keys
from shared.store.redis import timed
from shared.store.roster import RosterItem, decode_items
from shared.store.sessions import OWNED_LUA, SessionRecord

# Append unless the list is full: ARGV cap, payload.  Returns the new length, 0 when full.
_PUSH_CAPPED: Final = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
return redis.call('RPUSH', KEYS[1], ARGV[2])
"""

# Every stored message, removed: one script rather than MULTI/LRANGE/DEL/EXEC, because every
# initial presence asks and the queue is nearly always empty.
_TAKE_ALL: Final = """
local m = redis.call('LRANGE', KEYS[1], 0, -1)
if #m > 0 then redis.call('DEL', KEYS[1]) end
return m
"""

# Broadcast available presence, the three reads and writes it starts with, in one script (all
# keys of one bare JID, one hash slot).  KEYS: sessions, sessions version, presence, roster.
# ARGV: resource, expected "<cm_id> <sid>" ("" leaves the session table alone), new session
# record, presence stanza.  Returns {session version (0: unchanged), 1 if the resource was
# not available before, the roster hash}.
_GO_AVAILABLE: Final = OWNED_LUA + """
local version = 0
if ARGV[2] ~= '' then
  if owned(redis.call('HGET', KEYS[1], ARGV[1]), ARGV[2]) then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
    version = redis.call('INCR', KEYS[2])
  end
end
local new = redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return {version, new, redis.call('HGETALL', KEYS[4])}
"""


class OfflineStore:
    def __init__(self, redis: aioredis.Redis, service: str) -> None:
        self._r = redis
        self._service = service
        self._push = redis.register_script(_PUSH_CAPPED)
        self._take = redis.register_script(_TAKE_ALL)

    async def store(self, bare: str, payload: bytes, cap: int) -> int:
        """Queue length after storing, or 0 when the queue is full."""
        async with timed(self._service, "offline_store"):
            return int(await self._push(keys=[keys.offline(bare)], args=[cap, payload]))

    async def take_all(self, bare: str) -> list[bytes]:
        """Every stored message, oldest first, removed atomically."""
        async with timed(self._service, "offline_take"):
            return list(await self._take(keys=[keys.offline(bare)]))

    async def count(self, bare: str) -> int:
        return int(await self._r.llen(keys.offline(bare)))


class PresenceStore:
    def __init__(self, redis: aioredis.Redis, service: str) -> None:
        self._r = redis
        self._service = service
        self._go_available = redis.register_script(_GO_AVAILABLE)

    async def go_available(
        self, full: str, record: SessionRecord | None, payload: bytes
    ) -> tuple[int, bool, dict[str, RosterItem]]:
        """What broadcast available presence starts with, in one round trip: the session's
        record updated if this session still owns the resource (`SessionStore.update`),
        the presence remembered (`set_available`) and the user's roster items read.

        (session version, 0 when unchanged; True when the resource was not available
        before; the roster items by contact)."""
        bare, _, resource = full.partition("/")
        async with timed(self._service, "presence_available"):
            version, new, flat = await self._go_available(
                keys=[keys.sessions(bare), keys.sessions_version(bare), keys.presence(bare),
                      keys.roster(bare)],
                args=[resource, record.owner if record else "",
                      record.encode() if record else "", payload],
            )
        roster = dict(zip(flat[::2], flat[1::2], strict=True))  # HGETALL's flat reply
        return int(version), bool(new), decode_items(roster)

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
