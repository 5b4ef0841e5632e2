"""Operations the shared servers did, read before and after a phase: Redis commands (INFO
commandstats, scripts' inner commands included) and memory, NATS messages (nats-server's
/varz), PostgreSQL transactions and row writes (pg_stat_database).

PostgreSQL's counters lag: a backend reports its statistics at most once a second, and an
idle one within about ten (PostgreSQL 15+ `PGSTAT_IDLE_INTERVAL`), so a reading with a
database waits that long before it reads them.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis

# commands a reading itself makes (and the cluster client's discovery), not the servers' work
OWN_COMMANDS = frozenset({"info", "ping", "hello", "client|setinfo", "auth", "cluster|slots"})
PG_SETTLE_S = 11.0  # PGSTAT_IDLE_INTERVAL (10 s) and a margin
PG_FIELDS = ("xact_commit", "tup_inserted", "tup_updated", "tup_deleted")


@dataclass
class OpCounters:
    """Where to read: the cluster's Redis (a user allowed INFO), nats-server's monitoring
    port (0: no NATS figures), its PostgreSQL database ("" : none)."""

    redis_url: str
    nats_http_port: int = 0
    database_url: str = ""
    pg_settle_s: float = PG_SETTLE_S

    def read(self, start: bool = False) -> dict[str, float]:
        """Redis and NATS as they are now, and PostgreSQL once its backends have reported
        (with a database, `pg_settle_s` go by first): at the `start` of a phase the wait comes
        before every reading (so that they all see what came before it), at its end between
        Redis and NATS and PostgreSQL (so that PostgreSQL's see the phase's last writes)."""
        out: dict[str, float] = {}
        if self.database_url and start:
            time.sleep(self.pg_settle_s)
            out.update(asyncio.run(self._pg()))
        out.update(self._redis())
        if self.nats_http_port:
            out.update(self._nats())
        if self.database_url and not start:
            time.sleep(self.pg_settle_s)
            out.update(asyncio.run(self._pg()))
        return out

    def _redis(self) -> dict[str, float]:
        client = redis.Redis.from_url(self.redis_url)
        try:
            stats = client.info("commandstats")
            memory = client.info("memory")
        finally:
            client.close()
        calls = usec = 0.0
        per: dict[str, float] = {}
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            if name in OWN_COMMANDS:
                continue
            calls += value["calls"]
            usec += value["usec"]
            per[f"redis.cmd.{name}"] = float(value["calls"])
        return {"redis.commands": calls, "redis.usec": usec,
                "redis.used_memory": float(memory["used_memory"]), **per}

    def _nats(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.nats_http_port}/varz"
        with urllib.request.urlopen(url, timeout=5) as resp:
            varz: dict[str, Any] = json.loads(resp.read())
        return {"nats.in_msgs": float(varz["in_msgs"]), "nats.out_msgs": float(varz["out_msgs"]),
                "nats.in_bytes": float(varz["in_bytes"]),
                "nats.out_bytes": float(varz["out_bytes"]), "nats.mem": float(varz["mem"])}

    async def _pg(self) -> dict[str, float]:
        conn = await asyncpg.connect(self.database_url)
        try:
            row = await conn.fetchrow(
                "SELECT " + ", ".join(PG_FIELDS) + " FROM pg_stat_database"
                " WHERE datname = current_database()")
        finally:
            await conn.close()
        return {f"pg.{f}": float(row[f]) if row is not None else 0.0 for f in PG_FIELDS}


# levels, not counts: a delta of these is a growth, not a number of operations
LEVELS = frozenset({"redis.used_memory", "nats.mem"})


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What happened between two readings (keys of `after`; a key new in `after` counts from
    0).  The reading's own PostgreSQL transaction is taken off (one per reading)."""
    out = {k: v - before.get(k, 0.0) for k, v in after.items()}
    if "pg.xact_commit" in out:
        out["pg.xact_commit"] = max(0.0, out["pg.xact_commit"] - 1)
    return out


def pg_writes(d: dict[str, float]) -> float:
    """Rows written (inserted, updated, deleted) in a delta."""
    return sum(d.get(f"pg.{f}", 0.0) for f in ("tup_inserted", "tup_updated", "tup_deleted"))
