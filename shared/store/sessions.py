"""The session table: where every bound resource lives (RFC 6120 §7).

``sess:{bare}`` maps resource -> record ``"<cm_id> <session_id> <priority> <available>"``,
followed by ``" <carbons>"`` once the resource enabled XEP-0280 carbons (`set_carbons`: the
flag lives with the record, so routers see it through their session cache; a record written
without it, by the presence service, keeps the flag the stored one has: `merged` below);
``sessver:{bare}`` is bumped by every change so that caches can tell old from new.  Binding is
one atomic script that also enforces the per-account session limit and returns the record it
replaced (RFC 6120 §7.7.2.2: the old session of the same full JID is terminated with
``<conflict/>``).  Unbinding and updating compare the session id, so a stale connection never
removes the session that replaced it.

``cm:{id}:sessions`` indexes the full JIDs of one connection manager (written once per tick
by `shared.store.cm_index.CmIndex`, not by each bind), ``cm:{id}:alive`` is its
heartbeat and ``cm:{id}:load`` the load it publishes with it: when the heartbeat expires,
the presence service's reaper reaps the index (see ``reap``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis

from shared.store import keys, tick
from shared.store.cm_index import CmIndex
from shared.store.redis import timed

_BIND: Final = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return {-1, false}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {redis.call('INCR', KEYS[2]), cur}
"""

# Lua: does the record `cur` belong to the session `owner` ("<cm_id> <sid>",
# `SessionRecord.owner`)?  Every script that replaces a record only when its session still
# owns it starts with this (also shared.store.presence's go-available script).
OWNED_LUA: Final = """
local function owned(cur, owner)
  return cur and string.sub(cur, 1, string.len(owner) + 1) == owner .. ' '
end
local function merged(cur, new)
  if cur and not string.match(new, '^%S+ %S+ %S+ %S+ ') then
    local flags = string.match(cur, '^%S+ %S+ %S+ %S+ (.+)$')
    if flags then
      return new .. ' ' .. flags
    end
  end
  return new
end
"""

# ARGV: resource, expected "<cm_id> <sid>" prefix, new record ("" deletes)
_REPLACE_IF_OWNED: Final = OWNED_LUA + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not owned(cur, ARGV[2]) then
  return 0
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], merged(cur, ARGV[3]))
end
return redis.call('INCR', KEYS[2])
"""

# ARGV: resource, expected "<cm_id> <sid>", the carbons flag ("0" or "1"): the record with
# that flag, the rest as it is; the new version, or 0 when the session no longer owns it
_SET_CARBONS: Final = OWNED_LUA + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not owned(cur, ARGV[2]) then
  return 0
end
local base = string.match(cur, '^(%S+ %S+ %S+ %S+)')
redis.call('HSET', KEYS[1], ARGV[1], base .. ' ' .. ARGV[3])
return redis.call('INCR', KEYS[2])
"""

# ARGV: resource, expected "<cm_id> <sid>", new cm_id: the record names the new connection
# manager, the rest (session id, priority, availability) as it is; {version, record} or {0}
_MOVE: Final = OWNED_LUA + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur and ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
  return {redis.call('INCR', KEYS[2]), ARGV[4]}
end
if not owned(cur, ARGV[2]) then
  return {0}
end
local at = string.find(cur, ' ', 1, true)
local moved = ARGV[3] .. string.sub(cur, at)
redis.call('HSET', KEYS[1], ARGV[1], moved)
return {redis.call('INCR', KEYS[2]), moved}
"""

# ARGV: resource, record: written only when the resource has none (a session written again
# after Redis lost it must not replace a newer bind); the new version, or 0
_RESTORE: Final = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCR', KEYS[2])
"""

# ARGV: resource, cm_id: delete when the record belongs to that connection manager
_REAP_ONE: Final = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur or string.sub(cur, 1, string.len(ARGV[2]) + 1) ~= ARGV[2] .. ' ' then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
return redis.call('INCR', KEYS[2])
"""


class SessionLimitReached(Exception):
    """The account already has the maximum number of bound resources."""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """Where a bound resource lives and how it wants messages."""

    cm_id: str
    session_id: str
    priority: int = 0
    available: bool = False
    carbons: bool = False  # XEP-0280 enabled; written only by `SessionStore.set_carbons`

    def encode(self) -> str:
        """Without the carbons flag: a record written from this keeps the stored flag."""
        return f"{self.cm_id} {self.session_id} {self.priority} {int(self.available)}"

    @classmethod
    def decode(cls, raw: bytes | str) -> SessionRecord:
        text = raw.decode() if isinstance(raw, bytes) else raw
        cm_id, session_id, priority, available, *flags = text.split(" ")
        return cls(cm_id, session_id, int(priority), available == "1",
                   bool(flags) and flags[0] == "1")

    @property
    def owner(self) -> str:
        return f"{self.cm_id} {self.session_id}"


@dataclass(frozen=True, slots=True)
class BindResult:
    version: int
    replaced: SessionRecord | None


def split_full(full_jid: str) -> tuple[str, str]:
    bare, _, resource = full_jid.partition("/")
    return bare, resource


_GLOB_SPECIAL: Final = re.compile(r"([*?\[\]\\])")  # escaped in a SCAN MATCH pattern


class SessionStore:
    """Session table access; one instance per service process."""

    def __init__(self, redis: aioredis.Redis, service: str) -> None:
        self._r = redis
        self._tick = tick.of(redis)  # binds and unbinds go out with their tick's commands
        self._service = service
        self._bind = redis.register_script(_BIND)
        self._replace = redis.register_script(_REPLACE_IF_OWNED)
        self._reap_one = redis.register_script(_REAP_ONE)
        self._move = redis.register_script(_MOVE)
        self._set_carbons = redis.register_script(_SET_CARBONS)
        self._restore = redis.register_script(_RESTORE)
        self._indexes: dict[str, CmIndex] = {}  # cm_id -> the index this process writes

    def _index(self, cm_id: str) -> CmIndex:
        index = self._indexes.get(cm_id)
        if index is None:
            index = self._indexes[cm_id] = CmIndex(self._r, self._service, cm_id)
        return index

    async def bind(self, full_jid: str, record: SessionRecord, max_sessions: int,
                   address: str = "") -> BindResult:
        """Bind (one script); the connection manager's index learns it, with the client's
        ``address``, in the next round trip (`CmIndex`: another hash slot, never inside the
        script), and the bind returns only once it has: a connection manager killed right
        after a client's bind result leaves no session the reaper cannot find.  A record
        with `carbons` set binds with XEP-0280 on (XEP-0386 §3.2, inline)."""
        bare, resource = split_full(full_jid)
        value = record.encode() + (" 1" if record.carbons else "")
        async with timed(self._service, "session_bind"):
            version, old = await self._tick.script(
                self._bind,
                [keys.sessions(bare), keys.sessions_version(bare)],
                [resource, value, max_sessions],
            )
        if version == -1:
            raise SessionLimitReached(bare)
        index = self._index(record.cm_id)
        index.add(full_jid, address)
        await index.flush()
        return BindResult(int(version), SessionRecord.decode(old) if old else None)

    async def update(self, full_jid: str, record: SessionRecord) -> int:
        """Replace the record if this session still owns the resource; 0 when it does not."""
        bare, resource = split_full(full_jid)
        async with timed(self._service, "session_update"):
            return int(
                await self._replace(
                    keys=[keys.sessions(bare), keys.sessions_version(bare)],
                    args=[resource, record.owner, record.encode()],
                )
            )

    async def set_carbons(self, full_jid: str, owner: str, enabled: bool) -> int:
        """XEP-0280 §4, §5: the session `owner` ("<cm_id> <session_id>") turned carbons on or
        off; the new version (publish a session event with it), 0 when it no longer owns the
        resource."""
        bare, resource = split_full(full_jid)
        async with timed(self._service, "session_carbons"):
            return int(await self._tick.script(
                self._set_carbons,
                [keys.sessions(bare), keys.sessions_version(bare)],
                [resource, owner, "1" if enabled else "0"],
            ))

    async def unbind(self, full_jid: str, record: SessionRecord) -> int:
        """Remove the resource if this session still owns it; 0 when it does not.  Its
        entry in the connection manager's index goes within the tick (`CmIndex`), and only
        when it was still ours: a newer session of the same full JID on the same connection
        manager keeps the entry (one left behind for another connection manager is harmless:
        the reaper checks the record's connection manager, and the index goes at retire)."""
        bare, resource = split_full(full_jid)
        async with timed(self._service, "session_unbind"):
            version = await self._tick.script(
                self._replace,
                [keys.sessions(bare), keys.sessions_version(bare)],
                [resource, record.owner, ""],
            )
        if version:
            self._index(record.cm_id).discard(full_jid)
        return int(version)

    async def move(self, full_jid: str, owner: str, cm_id: str,
                   address: str = "", restore: SessionRecord | None = None
                   ) -> BindResult | None:
        """XEP-0198 resumption on another connection manager: the record of the session
        `owner` ("<cm_id> <session_id>") names `cm_id` instead, in one compare-and-set that
        keeps its session id, priority and availability (no presence flap).  None when
        `owner` no longer owns the resource (a new bind won).  The commit point of a
        take-over; ``replaced`` of the result is the record as it is now.  `restore`: the
        record to write when the resource has none (the owner died and was reaped)."""
        bare, resource = split_full(full_jid)
        async with timed(self._service, "session_move"):
            reply = await self._tick.script(
                self._move,
                [keys.sessions(bare), keys.sessions_version(bare)],
                [resource, owner, cm_id, restore.encode() if restore is not None else ""],
            )
        if not reply[0]:
            return None
        self._index(cm_id).add(full_jid, address)
        return BindResult(int(reply[0]), SessionRecord.decode(reply[1]))

    async def restore(self, full_jid: str, record: SessionRecord, address: str = "") -> int:
        """Write the record of a session still bound on its connection manager when the
        resource has none (Redis restarted empty, or the reaper removed it while the
        connection manager's heartbeat was late), with its index entry; the new version,
        or 0 when the resource has a record (a newer bind, which wins).  Goes with the
        tick's round trip, so the sessions of a whole pod go in a few."""
        bare, resource = split_full(full_jid)
        value = record.encode() + (" 1" if record.carbons else "")
        async with timed(self._service, "session_restore"):
            version = await self._tick.script(
                self._restore, [keys.sessions(bare), keys.sessions_version(bare)],
                [resource, value])
        if version:
            self._index(record.cm_id).add(full_jid, address)
        return int(version)

    def left(self, full_jid: str, cm_id: str) -> None:
        """`full_jid` is no longer a session of `cm_id` (it moved to another connection
        manager): its index entry goes within the tick."""
        self._index(cm_id).discard(full_jid)

    async def get(self, bare_jid: str) -> dict[str, SessionRecord]:
        async with timed(self._service, "session_get"):
            raw = await self._r.hgetall(keys.sessions(bare_jid))
        return {k.decode(): SessionRecord.decode(v) for k, v in raw.items()}

    async def forget_account(self, bare_jid: str) -> None:
        """A removed account's soft state (XEP-0077 §3.2): its presence, directed presence,
        XEP-0198 resumption facts, login throttling, its avatar hash (XEP-0398), and the keys
        of the Redis-only layout `stanzad db import-redis` reads.  Its session table empties as its
        sessions end."""
        doomed = [keys.presence(bare_jid), keys.account(bare_jid), keys.roster(bare_jid),
                  keys.roster_version(bare_jid), keys.roster_tombstones(bare_jid),
                  keys.offline(bare_jid), keys.vcard(bare_jid), keys.private_storage(bare_jid),
                  keys.blocklist(bare_jid), keys.auth_failures_account(bare_jid),
                  keys.auth_lock_account(bare_jid), keys.avatar_hash(bare_jid)]
        for resource in await self._r.hkeys(keys.sessions(bare_jid)):
            doomed.append(keys.directed_presence(f"{bare_jid}/{resource.decode()}"))
        async with timed(self._service, "account_forget"):
            pattern = keys.sm_facts(_GLOB_SPECIAL.sub(r"\\\1", bare_jid), "*")
            async for key in self._r.scan_iter(match=pattern, count=100):
                doomed.append(key.decode() if isinstance(key, bytes) else key)
            await self._r.delete(*doomed)

    async def get_many(self, bare_jids: list[str]) -> list[dict[str, SessionRecord]]:
        """The sessions of each bare JID, in one round trip."""
        async with timed(self._service, "session_get_many"), self._r.pipeline(
            transaction=False
        ) as pipe:
            for bare in bare_jids:
                pipe.hgetall(keys.sessions(bare))
            replies = await pipe.execute()
        return [{k.decode(): SessionRecord.decode(v) for k, v in r.items()} for r in replies]

    # --- connection manager liveness -------------------------------------------------------

    async def heartbeat(self, cm_id: str, ttl_s: int, c2s: str = "", load: bytes = b"",
                        peers: bool = False) -> list[tuple[str, bytes | None, int]]:
        """`cm_id` is alive for `ttl_s` more seconds; its value is the c2s address the
        connection manager listens on ("host:port", for `stanzad status`; "1" before it
        listens).  ``load`` (shared/cluster/placement.py) lives as long, beside it.  With
        ``peers``, the same round trip reads the members of the set of connection managers,
        and one more their loads (`loads`)."""
        async with timed(self._service, "heartbeat"), self._r.pipeline(transaction=False) as p:
            p.set(keys.cm_alive(cm_id), c2s or b"1", ex=ttl_s)
            if load:
                p.set(keys.cm_load(cm_id), load, ex=ttl_s)
            p.sadd(keys.CMS, cm_id)
            if peers:
                p.smembers(keys.CMS)
            replies = await p.execute()
        if not peers:
            return []
        return await self.loads(sorted(m.decode() for m in replies[-1]))

    async def alive(self, cm_id: str) -> bool:
        """Whether Redis still has the heartbeat of ``cm_id`` (false after Redis restarted
        empty, or after the heartbeat expired: its sessions may be gone from the table)."""
        return bool(await self._r.exists(keys.cm_alive(cm_id)))

    async def loads(self, cm_ids: list[str]) -> list[tuple[str, bytes | None, int]]:
        """(id, load record or None, its remaining time to live in ms) of each connection
        manager, in one round trip."""
        if not cm_ids:
            return []
        async with timed(self._service, "cm_loads"), self._r.pipeline(transaction=False) as p:
            for cm_id in cm_ids:
                p.get(keys.cm_load(cm_id))
                p.pttl(keys.cm_load(cm_id))
            replies = await p.execute()
        return [(cm_id, replies[2 * i], int(replies[2 * i + 1]))
                for i, cm_id in enumerate(cm_ids)]

    async def retire(self, cm_id: str) -> None:
        """A connection manager that stopped cleanly removes its heartbeat and index."""
        await self.flush_index(cm_id)
        await self._r.delete(keys.cm_alive(cm_id), keys.cm_sessions(cm_id),
                             keys.cm_addresses(cm_id), keys.cm_load(cm_id))
        await self._r.srem(keys.CMS, cm_id)

    async def connection_managers(self) -> dict[str, bool]:
        """Every registered connection manager id -> whether its heartbeat is alive."""
        ids = sorted(m.decode() for m in await self._r.smembers(keys.CMS))
        if not ids:
            return {}
        async with self._r.pipeline(transaction=False) as pipe:
            for cm_id in ids:
                pipe.exists(keys.cm_alive(cm_id))
            alive = await pipe.execute()
        return {cm_id: bool(a) for cm_id, a in zip(ids, alive, strict=True)}

    async def flush_index(self, cm_id: str) -> None:
        """Wait for this process's pending index changes of `cm_id` (see `CmIndex`)."""
        index = self._indexes.get(cm_id)
        if index is not None:
            await index.flush()

    async def cm_sessions(self, cm_id: str) -> list[str]:
        await self.flush_index(cm_id)  # this process reads its own writes
        return sorted(m.decode() for m in await self._r.smembers(keys.cm_sessions(cm_id)))

    async def cm_addresses(self, cm_id: str) -> dict[str, str]:
        """Full JID -> client address of the sessions of one connection manager."""
        await self.flush_index(cm_id)
        raw = await self._r.hgetall(keys.cm_addresses(cm_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def reap(self, cm_id: str) -> list[tuple[str, int]]:
        """Remove every session of a dead connection manager; (full JID, version) removed."""
        removed = []
        for full_jid in await self.cm_sessions(cm_id):
            bare, resource = split_full(full_jid)
            version = await self._reap_one(
                keys=[keys.sessions(bare), keys.sessions_version(bare)], args=[resource, cm_id]
            )
            if version:
                removed.append((full_jid, int(version)))
        await self.retire(cm_id)
        return removed
