"""Rosters (RFC 6121 §2) with versioning (§2.6) and subscription states (Appendix A).

Every change of one user's roster is made by the one roster-service process that owns the
user's partition, so writes need no locks; readers (the presence service) only read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import redis.asyncio as aioredis

from shared.store import keys
from shared.store.redis import timed
from shared.xmpp.subscription import State, Subscription


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


class RosterStore:
    def __init__(self, redis: aioredis.Redis, service: str) -> None:
        self._r = redis
        self._service = service

    async def load(self, bare: str) -> tuple[int, dict[str, RosterItem], dict[str, int]]:
        """(version, items by contact, removed contacts -> version removed)."""
        async with timed(self._service, "roster_load"), self._r.pipeline(
            transaction=False
        ) as pipe:
            pipe.get(keys.roster_version(bare))
            pipe.hgetall(keys.roster(bare))
            pipe.hgetall(keys.roster_tombstones(bare))
            ver, items, tombs = await pipe.execute()
        return (
            int(ver or 0),
            decode_items(items),
            {k.decode(): int(v) for k, v in tombs.items()},
        )

    async def item(self, bare: str, contact: str) -> RosterItem | None:
        async with timed(self._service, "roster_item"):
            raw = await self._r.hget(keys.roster(bare), contact)
        return RosterItem.decode(contact, raw) if raw else None

    async def items_of(self, pairs: list[tuple[str, str]]) -> list[RosterItem | None]:
        """Several (user, contact) items in one round trip."""
        async with timed(self._service, "roster_items"), self._r.pipeline(
            transaction=False
        ) as pipe:
            for bare, contact in pairs:
                pipe.hget(keys.roster(bare), contact)
            raws = await pipe.execute()
        return [
            RosterItem.decode(c, raw) if raw else None
            for (_, c), raw in zip(pairs, raws, strict=True)
        ]

    async def put(self, bare: str, item: RosterItem) -> RosterItem:
        """Store an item under a new roster version; returns it with that version."""
        async with timed(self._service, "roster_put"):
            ver = int(await self._r.incr(keys.roster_version(bare)))
            item = replace(item, ver=ver)
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(keys.roster(bare), item.jid, item.encode())
                pipe.hdel(keys.roster_tombstones(bare), item.jid)
                await pipe.execute()
        return item

    async def remove(self, bare: str, contact: str) -> int:
        async with timed(self._service, "roster_remove"):
            ver = int(await self._r.incr(keys.roster_version(bare)))
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hdel(keys.roster(bare), contact)
                pipe.hset(keys.roster_tombstones(bare), contact, ver)
                await pipe.execute()
        return ver

    async def count(self, bare: str) -> int:
        return int(await self._r.hlen(keys.roster(bare)))


def decode_items(raw: dict[bytes, bytes]) -> dict[str, RosterItem]:
    """The roster hash as Redis returns it, by contact."""
    return {k.decode(): RosterItem.decode(k.decode(), v) for k, v in raw.items()}
