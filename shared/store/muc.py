"""Multi-user chat rooms (XEP-0045): configuration, subject and affiliations in PostgreSQL
(``muc_rooms``, ``muc_affiliations``), live occupants and discussion history as soft state in
Redis (`keys.muc_occupants`, `keys.muc_history`), so whichever process owns the room's
partition next finds it as it was.

Redis commands used: HGETALL, HSET, HDEL, LRANGE, RPUSH, LTRIM, DEL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from shared.store import keys
from shared.store.pg.database import Database


@dataclass(slots=True)
class StoredRoom:
    jid: str
    config: dict[str, Any]
    subject: str
    subject_from: str
    secret: bytes
    locked: bool
    affiliations: dict[str, str]
    nicks: dict[str, str]  # bare JID -> its registered nickname (XEP-0045 §7.10)
    occupants: dict[str, dict[str, str]]  # nick -> occupant fields
    history: list[tuple[float, bytes]]


class MucStore:
    def __init__(self, db: Database, redis: aioredis.Redis) -> None:
        self._db = db
        self._redis = redis

    async def load(self, room: str) -> StoredRoom | None:
        """The room, or None when it does not exist (its stale soft state is cleared)."""
        row = await self._db.fetchrow(
            "muc_room_get",
            "SELECT config, subject, subject_from, secret, locked, "
            "coalesce((SELECT array_agg(ARRAY[a.jid, a.affiliation, a.nick]) "
            "FROM muc_affiliations a WHERE a.room = r.jid), '{}') AS affiliations "
            "FROM muc_rooms r WHERE jid = $1",
            room)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.muc_occupants(room))
            pipe.lrange(keys.muc_history(room), 0, -1)
            occ_raw, hist_raw = await pipe.execute()
        if row is None:
            if occ_raw or hist_raw:
                await self._redis.delete(keys.muc_occupants(room), keys.muc_history(room))
            return None
        occupants = {k.decode(): json.loads(v) for k, v in occ_raw.items()}
        history = []
        for h in hist_raw:
            ts, payload = json.loads(h)
            history.append((float(ts), payload.encode()))
        return StoredRoom(
            room, json.loads(row["config"]), row["subject"], row["subject_from"],
            bytes(row["secret"]), row["locked"],
            {j: a for j, a, _ in row["affiliations"]},
            {j: n for j, _, n in row["affiliations"] if n}, occupants, history)

    async def create(self, room: str, config: dict[str, Any], secret: bytes, locked: bool,
                     owner: str, max_rooms: int) -> bool:
        """Create the room owned by ``owner``; False when the owner already owns
        ``max_rooms`` rooms (0: no limit) or the room exists."""
        async with self._db.transaction("muc_room_create") as conn:
            if max_rooms:
                owned = await conn.fetchval(
                    "SELECT count(*) FROM muc_affiliations WHERE jid = $1 "
                    "AND affiliation = 'owner'", owner)
                if owned >= max_rooms:
                    return False
            done = await conn.fetchval(
                "INSERT INTO muc_rooms (jid, config, secret, locked) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT DO NOTHING RETURNING true", room, json.dumps(config), secret, locked)
            if not done:
                return False
            await conn.execute(
                "INSERT INTO muc_affiliations (room, jid, affiliation) VALUES ($1, $2, 'owner')",
                room, owner)
        return True

    async def save_room(self, room: str, config: dict[str, Any], subject: str,
                        subject_from: str, locked: bool) -> None:
        await self._db.execute(
            "muc_room_save",
            "UPDATE muc_rooms SET config = $2, subject = $3, subject_from = $4, locked = $5 "
            "WHERE jid = $1", room, json.dumps(config), subject, subject_from, locked)

    async def save_affiliations(self, room: str,
                                changed: dict[str, tuple[str, str] | None]) -> None:
        """bare JID -> (affiliation, registered nickname or ""), or None to remove it."""
        async with self._db.transaction("muc_affiliations_save") as conn:
            for jid, aff in changed.items():
                if aff is None:
                    await conn.execute(
                        "DELETE FROM muc_affiliations WHERE room = $1 AND jid = $2", room, jid)
                else:
                    await conn.execute(
                        "INSERT INTO muc_affiliations (room, jid, affiliation, nick) "
                        "VALUES ($1, $2, $3, $4) ON CONFLICT (room, jid) DO UPDATE SET "
                        "affiliation = excluded.affiliation, nick = excluded.nick",
                        room, jid, aff[0], aff[1])

    async def delete(self, room: str) -> None:
        await self._db.execute("muc_room_delete", "DELETE FROM muc_rooms WHERE jid = $1", room)
        await self._redis.delete(keys.muc_occupants(room), keys.muc_history(room))

    async def public_rooms(self, domain: str, limit: int) -> list[tuple[str, str]]:
        """(room JID, name) of the public, unlocked rooms of a service domain."""
        rows = await self._db.fetch(
            "muc_public_rooms",
            "SELECT jid, config->>'name' AS name FROM muc_rooms WHERE jid LIKE $1 "
            "AND NOT locked AND (config->>'public')::boolean ORDER BY jid LIMIT $2",
            f"%@{domain}", limit)
        return [(r["jid"], r["name"] or "") for r in rows]

    @staticmethod
    def queue_soft_state(pipe: Any, room: str, occupants: dict[str, dict[str, str] | None],
                         history: Iterable[tuple[float, bytes]], max_history: int) -> None:
        """Queue the soft-state writes of a room on ``pipe`` (one pipeline per bus batch)."""
        put = {n: json.dumps(o) for n, o in occupants.items() if o is not None}
        gone = [n for n, o in occupants.items() if o is None]
        if put:
            pipe.hset(keys.muc_occupants(room), mapping=put)
        if gone:
            pipe.hdel(keys.muc_occupants(room), *gone)
        entries = [json.dumps([ts, p.decode()]) for ts, p in history]
        if entries:
            pipe.rpush(keys.muc_history(room), *entries)
            pipe.ltrim(keys.muc_history(room), -max_history, -1)
