"""`stanzad db import-redis`: the durable data of a Redis-only deployment, into PostgreSQL.

Reads the keys of the schema before PostgreSQL (each with the bare JID as its hash tag):
``acct:{jid}`` (hash of SCRAM keys: ``sha1_salt``, ``sha1_iter``, ``sha1_stored``,
``sha1_server``, the same for sha256, ``created`` in Unix seconds), ``roster:{jid}`` (hash
contact -> JSON item ``{"n","g","s","o","i","a","h","v"}``), ``rosterver:{jid}`` (counter)
and ``rostertomb:{jid}`` (hash contact -> version removed at, RFC 6121 §2.6.3),
``offline:{jid}`` (list of stanzas, oldest first, XEP-0160), ``vcard:{jid}`` (the
serialised vCard-temp element, XEP-0054), ``private:{jid}`` (hash namespace -> element,
XEP-0049) and ``block:{jid}`` (set of blocked JIDs, XEP-0191).

Each (kind, owner) goes in one transaction with its row in ``redis_imports``; a second run
skips what that table lists, so it is idempotent, also after the services have run on
PostgreSQL for a while (a delivered offline message is not stored again; an account deleted
since is not made again).  Redis is only read: the old deployment's data stay for a rollback.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Final

import asyncpg
import redis.asyncio as aioredis

from shared.store.pg.database import Database
from shared.xmpp.credentials import from_redis_hash
from shared.xmpp.subscription import Subscription

KINDS: Final = ("account", "roster", "offline", "vcard", "private", "blocklist")
SCAN_COUNT: Final = 500

# the key prefix an owner's data of each kind is found by (rosters: also by their version)
_PREFIXES: Final = {
    "account": ("acct",),
    "roster": ("roster", "rosterver", "rostertomb"),
    "offline": ("offline",),
    "vcard": ("vcard",),
    "private": ("private",),
    "blocklist": ("block",),
}


class BadKey(Exception):
    """A key whose value is not in the old format; names the key."""


async def _owners(r: aioredis.Redis, prefixes: tuple[str, ...]) -> AsyncIterator[str]:
    """The bare JIDs of ``<prefix>:{<jid>}`` keys, each once (SCAN: never blocks Redis)."""
    seen: set[str] = set()
    for prefix in prefixes:
        async for raw in r.scan_iter(match=f"{prefix}:{{*}}", count=SCAN_COUNT):
            key = raw.decode()
            owner = key[len(prefix) + 2:-1]
            if key.endswith("}") and owner and owner not in seen:
                seen.add(owner)
                yield owner


async def _account(r: aioredis.Redis, c: asyncpg.Connection, owner: str) -> bool:
    raw = await r.hgetall(f"acct:{{{owner}}}")
    if not raw:
        return False
    try:
        creds = from_redis_hash(raw)
    except ValueError as exc:
        raise BadKey(f"acct:{{{owner}}}: {exc}") from None
    created = raw.get(b"created", b"")
    when = (datetime.fromtimestamp(int(created), UTC) if created.isdigit()
            else datetime.now(UTC))
    a, b = creds.sha1, creds.sha256
    status = await c.execute(
        "INSERT INTO accounts (jid, domain, created_at, sha1_salt, sha1_iterations, "
        "sha1_stored_key, sha1_server_key, sha256_salt, sha256_iterations, sha256_stored_key, "
        "sha256_server_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
        "ON CONFLICT (jid) DO NOTHING",
        owner, owner.rpartition("@")[2], when, a.salt, a.iterations, a.stored_key,
        a.server_key, b.salt, b.iterations, b.stored_key, b.server_key)
    return bool(status.endswith(" 1"))


async def _roster(r: aioredis.Redis, c: asyncpg.Connection, owner: str) -> bool:
    items = await r.hgetall(f"roster:{{{owner}}}")
    tombs = await r.hgetall(f"rostertomb:{{{owner}}}")
    version = int(await r.get(f"rosterver:{{{owner}}}") or 0)
    rows = []
    for contact, value in items.items():
        try:
            d = json.loads(value)
            rows.append((owner, contact.decode(), d["n"], list(d["g"]),
                         Subscription(d["s"]).value, bool(d["o"]), bool(d["i"]), bool(d["a"]),
                         bool(d["h"]), int(d["v"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise BadKey(f"roster:{{{owner}}} {contact!r}: {exc!r}") from None
    # the version is at least every item's and tombstone's (RFC 6121 §2.6: it only grows)
    version = max([version, *(row[-1] for row in rows), *(int(v) for v in tombs.values())])
    if version == 0 and not rows:
        return False
    await c.execute("INSERT INTO roster_versions (owner, version) VALUES ($1, $2) "
                    "ON CONFLICT (owner) DO UPDATE SET version = greatest("
                    "roster_versions.version, excluded.version)", owner, version)
    await c.executemany(
        "INSERT INTO roster_items (owner, contact, name, groups, subscription, pending_out, "
        "pending_in, approved, hidden, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
        "$10) ON CONFLICT (owner, contact) DO NOTHING", rows)
    await c.executemany(
        "INSERT INTO roster_tombstones (owner, contact, version) VALUES ($1, $2, $3) "
        "ON CONFLICT (owner, contact) DO NOTHING",
        [(owner, k.decode(), int(v)) for k, v in tombs.items()])
    return True


async def _offline(r: aioredis.Redis, c: asyncpg.Connection, owner: str) -> bool:
    stanzas = await r.lrange(f"offline:{{{owner}}}", 0, -1)
    # one statement, in list order: the bigserial ids keep them oldest first
    await c.execute("INSERT INTO offline_messages (owner, stanza) "
                    "SELECT $1, s FROM unnest($2::bytea[]) WITH ORDINALITY AS t(s, n) "
                    "ORDER BY n", owner, stanzas)
    return bool(stanzas)


async def _vcard(r: aioredis.Redis, c: asyncpg.Connection, owner: str) -> bool:
    vcard = await r.get(f"vcard:{{{owner}}}")
    if vcard is None:
        return False
    await c.execute("INSERT INTO vcards (owner, vcard) VALUES ($1, $2) "
                    "ON CONFLICT (owner) DO NOTHING", owner, vcard)
    return True


async def _private(r: aioredis.Redis, c: asyncpg.Connection, owner: str) -> bool:
    stored = await r.hgetall(f"private:{{{owner}}}")
    await c.executemany("INSERT INTO private_storage (owner, namespace, element) "
                        "VALUES ($1, $2, $3) ON CONFLICT (owner, namespace) DO NOTHING",
                        [(owner, ns.decode(), el) for ns, el in stored.items()])
    return bool(stored)


async def _blocklist(r: aioredis.Redis, c: asyncpg.Connection, owner: str) -> bool:
    blocked = sorted(j.decode() for j in await r.smembers(f"block:{{{owner}}}"))
    await c.execute("INSERT INTO blocklist (owner, jid) SELECT $1, unnest($2::text[]) "
                    "ON CONFLICT (owner, jid) DO NOTHING", owner, blocked)
    return bool(blocked)


_IMPORTERS: Final[dict[str, Callable[[aioredis.Redis, asyncpg.Connection, str],
                                     Awaitable[bool]]]] = {
    "account": _account, "roster": _roster, "offline": _offline, "vcard": _vcard,
    "private": _private, "blocklist": _blocklist,
}


async def import_redis(r: aioredis.Redis, db: Database) -> tuple[Counter[str], Counter[str]]:
    """Import every owner's data of every kind not imported yet; (imported, skipped) counts
    by kind (skipped: an earlier run did it).  The schema must be migrated."""
    imported: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for kind in KINDS:
        async for owner in _owners(r, _PREFIXES[kind]):
            async with db.transaction("import_redis") as c:
                done = await c.fetchval(
                    "INSERT INTO redis_imports (kind, owner) VALUES ($1, $2) "
                    "ON CONFLICT DO NOTHING RETURNING true", kind, owner)
                if not done:
                    skipped[kind] += 1
                    continue
                if await _IMPORTERS[kind](r, c, owner):
                    imported[kind] += 1
    return imported, skipped
