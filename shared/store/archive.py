"""The message archive (XEP-0313) in PostgreSQL: batched writes, queries, preferences
(XEP-0441) and the upkeep of its time partitions (retention and per-user caps).

Writes never sit on a delivery's path: a router hands each row to `ArchiveWriter.add`, which
only appends it to a bounded queue; the rows queued within ``linger_s`` of the first (one
event-loop tick with no linger) go out as one multi-row INSERT (unnest of arrays, one
prepared statement), one statement in flight at a time, and what is queued meanwhile goes in
the next.  The linger is what makes the archive cheap: a statement and its commit (a WAL
flush) cost PostgreSQL and the router far more than a row, and at chat rates a tick holds a
row or two (loadtest/RESULTS.md, "Archiving's price").  The owner's preferences are applied by
that statement itself (a join on ``mam_prefs`` and, for "roster", on ``roster_items``), so a
router needs no lookup per message.  While PostgreSQL fails the rows stay queued and the
statement is retried (1 s, doubling to 30 s); beyond ``max_pending`` rows the oldest are
dropped and counted (``stanzad_archive_rows_total{result="dropped"}``): an outage costs
archive rows, never a delivery, and at most ``max_pending`` rows of memory.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg
from prometheus_client import Counter, Histogram

from shared.runtime.metrics import Tally
from shared.store.pg.database import Database
from shared.xmpp.archive import Prefs, Query, Row, is_id, time_of

log = logging.getLogger(__name__)

MAX_BATCH: Final = 1000  # rows per INSERT; more queued go in the next
RETRY_FIRST_S: Final = 1.0
RETRY_MAX_S: Final = 30.0
COUNT_SETTLED_S: Final = 10.0  # rows older than this are in (writers linger 0.1 s)
COUNT_TTL_S: Final = 300.0  # a settled count is reused this long
COUNT_CACHE_SIZE: Final = 10_000  # result sets whose count is kept
MAINTENANCE_LOCK: Final = 0x6D61_6D5F_6B65  # "mam_ke": one process maintains at a time
DAYS_AHEAD: Final = 2  # daily partitions created this many days ahead

ROWS: Final = Counter(
    "stanzad_archive_rows_total",
    "Archive rows by outcome: written (inserted or filtered by preferences in the statement), "
    "dropped (queue full while PostgreSQL failed).", ["result"],
)
BATCHES: Final = Counter(
    "stanzad_archive_batches_total", "Archive INSERT statements by result.", ["result"]
)
QUERY_LATENCY: Final = Histogram(
    "stanzad_archive_query_duration_seconds",
    "XEP-0313 query time in PostgreSQL (a page and its count).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

# The time of a row is read from its id (14 hex digits of µs since the epoch,
# `shared.xmpp.archive.new_id`), exactly as `time_of` reads it: no datetime per row in Python.
_INSERT: Final = """
INSERT INTO mam_messages (owner, ts, id, peer, peer_bare, outgoing, stanza)
SELECT r.owner,
       'epoch'::timestamptz
           + ('x' || substr(r.id, 1, 14))::bit(56)::bigint * interval '1 microsecond',
       r.id, r.peer, r.peer_bare, r.outgoing, r.stanza
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::boolean[], $6::bytea[])
     AS r(owner, id, peer, peer_bare, outgoing, stanza)
LEFT JOIN mam_prefs p ON p.owner = r.owner
WHERE CASE
    WHEN r.peer_bare = ANY(coalesce(p.never, '{}')) THEN false
    WHEN r.peer_bare = ANY(coalesce(p.always, '{}')) THEN true
    WHEN coalesce(p.default_mode, $7) = 'always' THEN true
    WHEN coalesce(p.default_mode, $7) = 'roster' THEN EXISTS (
        SELECT 1 FROM roster_items i
        WHERE i.owner = r.owner AND i.contact = r.peer_bare AND NOT i.hidden)
    ELSE false
END
"""
# A batch retried after a failure whose commit in fact went through (a timeout, a connection
# lost after COMMIT) meets its own rows: that retry skips them.  Not the statement of every
# batch: the speculative insertion costs PostgreSQL about a fifth more CPU per row.
_INSERT_AGAIN: Final = _INSERT + "ON CONFLICT DO NOTHING\n"


# a row waiting: (owner, id, peer, peer_bare, outgoing, stanza), the statement's columns
Pending = tuple[str, str, str, str, bool, bytes]


class ArchiveWriter:
    """Rows to archive, written in batches off the caller's path (module docstring)."""

    def __init__(self, db: Database, default_mode: str, max_pending: int,
                 linger_s: float = 0.0) -> None:
        self._db = db
        self._linger = linger_s
        self._default = default_mode
        self._max = max_pending
        self._queue: collections.deque[Pending] = collections.deque()
        self._sender: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._written = Tally(ROWS.labels("written"))
        self._dropped = Tally(ROWS.labels("dropped"))

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, owner: str, archive_id: str, peer: str, peer_bare: str, outgoing: bool,
            stanza: bytes) -> None:
        if not is_id(archive_id):
            return
        self._queue.append((owner, archive_id, peer, peer_bare, outgoing, stanza))
        if len(self._queue) > self._max:
            self._queue.popleft()
            self._dropped.n += 1
        if self._sender is None:  # started next tick, after everything else this tick adds
            self._idle.clear()
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def flush(self, within_s: float = 10.0) -> None:
        """Wait until what is queued now has been written (tests, a clean stop)."""
        await asyncio.wait_for(self._idle.wait(), within_s)

    async def _send(self) -> None:
        delay = RETRY_FIRST_S
        try:
            while self._queue:
                if self._linger > 0 and len(self._queue) < MAX_BATCH:
                    await asyncio.sleep(self._linger)  # the rows of the next moments join
                batch = [self._queue.popleft()
                         for _ in range(min(MAX_BATCH, len(self._queue)))]
                try:
                    await self._insert(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    BATCHES.labels("error").inc()
                    log.warning("archive write of %d rows failed (retry in %.0f s): %s",
                                len(batch), delay, exc)
                    room = max(0, self._max - len(self._queue))
                    self._dropped.n += max(0, len(batch) - room)
                    self._queue.extendleft(reversed(batch[len(batch) - room:] if room else []))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                delay = RETRY_FIRST_S
                BATCHES.labels("ok").inc()
                self._written.n += len(batch)
        finally:
            self._sender = None
            self._idle.set()

    async def _insert(self, batch: Sequence[Pending]) -> None:
        columns = [list(c) for c in zip(*batch, strict=True)]
        try:
            await self._db.execute("archive_insert", _INSERT, *columns, self._default)
        except asyncpg.UniqueViolationError:
            await self._db.execute("archive_insert_again", _INSERT_AGAIN, *columns,
                                   self._default)

    async def close(self) -> None:
        if self._sender is not None:
            try:
                await self.flush(5.0)
            except TimeoutError:
                self._sender.cancel()


class UnknownId(Exception):
    """A query named an archive id the owner's archive does not hold (item-not-found)."""


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[Row]
    complete: bool
    count: int


def _key(archive_id: str) -> tuple[datetime.datetime, str]:
    ts = time_of(archive_id)
    if ts is None:
        raise UnknownId(archive_id)
    return ts, archive_id


class ArchiveStore:
    """Queries and preferences of one owner's archive, and the table's upkeep."""

    def __init__(self, db: Database, service: str) -> None:
        self._db = db
        self._service = service
        # result-set counts: (filters, args) -> (expires, rows up to this time, their count)
        self._counts: collections.OrderedDict[
            tuple[object, ...], tuple[float, datetime.datetime, int]] = \
            collections.OrderedDict()

    async def query(self, owner: str, q: Query) -> Page:
        started = time.perf_counter()
        try:
            return await self._query(owner, q)
        finally:
            QUERY_LATENCY.observe(time.perf_counter() - started)

    async def _query(self, owner: str, q: Query) -> Page:
        named = [_key(i) for i in (*q.cursor_ids, *q.ids)]
        if named:
            found = await self._db.fetchval(
                "archive_ids",
                "SELECT count(DISTINCT (ts, id)) FROM mam_messages WHERE owner = $1 AND "
                "(ts, id) IN (SELECT * FROM unnest($2::timestamptz[], $3::text[]))",
                owner, [k[0] for k in named], [k[1] for k in named])
            if found != len(set(named)):
                raise UnknownId("an id the archive does not hold")
        args: list[object] = [owner]

        def arg(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        where = ["owner = $1"]
        if q.with_jid:
            where.append(f"{'peer' if q.with_full else 'peer_bare'} = {arg(q.with_jid)}")
        if q.start is not None:
            where.append(f"ts >= {arg(q.start)}")
        if q.end is not None:
            where.append(f"ts <= {arg(q.end)}")
        for archive_id, op in ((q.after_id, ">"), (q.before_id, "<")):
            if archive_id:
                ts, i = _key(archive_id)
                where.append(f"(ts, id) {op} ({arg(ts)}, {arg(i)})")
        if q.ids:
            keys = [_key(i) for i in q.ids]
            where.append(f"(ts, id) IN (SELECT * FROM unnest({arg([k[0] for k in keys])}"
                         f"::timestamptz[], {arg([k[1] for k in keys])}::text[]))")
        filters = " AND ".join(where)
        count_args = list(args)
        page_where = list(where)
        if q.after:
            ts, i = _key(q.after)
            page_where.append(f"(ts, id) > ({arg(ts)}, {arg(i)})")
        if q.before:
            ts, i = _key(q.before)
            page_where.append(f"(ts, id) < ({arg(ts)}, {arg(i)})")
        order = "DESC" if q.backwards else "ASC"
        rows: list[Row] = []
        if not q.count_only:
            records = await self._db.fetch(
                "archive_page",
                f"SELECT id, ts, stanza FROM mam_messages WHERE {' AND '.join(page_where)} "
                f"ORDER BY ts {order}, id {order} LIMIT {arg(q.max + 1)}"
                + (f" OFFSET {arg(q.index)}" if q.index is not None else ""), *args)
            rows = [Row(r["id"], r["ts"], bytes(r["stanza"])) for r in records]
        complete = len(rows) <= q.max
        rows = rows[:q.max]
        if q.backwards:
            rows.reverse()
        return Page(rows, complete, await self._count(filters, count_args))

    async def _count(self, filters: str, args: list[object]) -> int:
        """The result set's size (XEP-0059 §2.7, which lets it be approximate when an exact
        one is costly): what is older than `COUNT_SETTLED_S` is counted once and kept for
        `COUNT_TTL_S` (a client paging through a large archive asks the same count again
        and again: the first answer costs a scan of its archive's index, later ones only
        the newest rows); rows deleted meanwhile (retention, caps) are still counted then."""
        key = (filters, *(tuple(a) if isinstance(a, list) else a for a in args))
        now = time.monotonic()
        cached = self._counts.get(key)
        if cached is not None and cached[0] > now:
            self._counts.move_to_end(key)
            _, cut, settled = cached
            fresh = await self._db.fetchval(
                "archive_count_fresh",
                f"SELECT count(*) FROM mam_messages WHERE {filters} AND ts > ${len(args) + 1}",
                *args, cut)
            return settled + int(fresh)
        cut = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=COUNT_SETTLED_S)
        record = await self._db.fetchrow(
            "archive_count",
            f"SELECT count(*) FILTER (WHERE ts <= ${len(args) + 1}) AS settled, "
            f"count(*) FILTER (WHERE ts > ${len(args) + 1}) AS fresh "
            f"FROM mam_messages WHERE {filters}", *args, cut)
        assert record is not None
        self._counts[key] = (now + COUNT_TTL_S, cut, int(record["settled"]))
        if len(self._counts) > COUNT_CACHE_SIZE:
            self._counts.popitem(last=False)
        return int(record["settled"]) + int(record["fresh"])

    # ---- preferences (XEP-0441) ----

    async def prefs(self, owner: str, default_mode: str) -> Prefs:
        row = await self._db.fetchrow(
            "archive_prefs_get",
            "SELECT default_mode, always, never FROM mam_prefs WHERE owner = $1", owner)
        if row is None:
            return Prefs(default_mode)
        return Prefs(row["default_mode"], tuple(row["always"]), tuple(row["never"]))

    async def set_prefs(self, owner: str, prefs: Prefs) -> None:
        await self._db.execute(
            "archive_prefs_set",
            "INSERT INTO mam_prefs (owner, default_mode, always, never) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (owner) DO UPDATE SET default_mode = excluded.default_mode, "
            "always = excluded.always, never = excluded.never",
            owner, prefs.default, list(prefs.always), list(prefs.never))

    # ---- upkeep ----

    async def maintain(self, retention_days: int, max_per_user: int,
                       now: datetime.datetime | None = None) -> dict[str, int]:
        """Daily partitions from yesterday to `DAYS_AHEAD` days ahead (rows the default
        partition caught for one of those days move into it), partitions past the retention
        dropped (0: kept forever), and archives beyond `max_per_user` rows cut to their newest
        (0: no cap).  One process at a time (an advisory lock); the others return at once."""
        now = now or datetime.datetime.now(datetime.UTC)
        today = now.date()
        done = {"created": 0, "dropped": 0, "trimmed": 0}
        async with self._db.connection("archive_maintain") as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK):
                return done
            try:
                existing = {r["name"] for r in await conn.fetch(
                    "SELECT c.relname AS name FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid "
                    "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'mam_messages'")}
                for offset in range(-1, DAYS_AHEAD + 1):
                    day = today + datetime.timedelta(days=offset)
                    name = _partition_name(day)
                    if name in existing:
                        continue
                    lo, hi = _day_bounds(day)
                    async with conn.transaction():
                        await conn.execute(
                            f"CREATE TABLE {name} (LIKE mam_messages INCLUDING DEFAULTS)",
                            timeout=None)
                        await conn.execute(
                            f"WITH moved AS (DELETE FROM mam_messages_default WHERE ts >= $1 "
                            f"AND ts < $2 RETURNING *) INSERT INTO {name} SELECT * FROM moved",
                            lo, hi, timeout=None)
                        await conn.execute(
                            f"ALTER TABLE mam_messages ATTACH PARTITION {name} "
                            f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')",
                            timeout=None)
                    done["created"] += 1
                if retention_days > 0:
                    cutoff = today - datetime.timedelta(days=retention_days)
                    for name in sorted(existing):
                        day = _partition_day(name)
                        if day is not None and day < cutoff:
                            await conn.execute(f"DROP TABLE {name}", timeout=None)
                            done["dropped"] += 1
                    await conn.execute(
                        "DELETE FROM mam_messages_default WHERE ts < $1",
                        _day_bounds(cutoff)[0], timeout=None)
                if max_per_user > 0:
                    status = await conn.execute(_TRIM, max_per_user, timeout=None)
                    done["trimmed"] = int(status.rsplit(" ", 1)[-1])
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK)
        return done


# An owner's rows beyond the newest `$1`: one pass over the owners that exceed the cap.
_TRIM: Final = """
DELETE FROM mam_messages m USING (
    SELECT owner, ts, id FROM (
        SELECT owner, ts, id,
               row_number() OVER (PARTITION BY owner ORDER BY ts DESC, id DESC) AS n
        FROM mam_messages
        WHERE owner IN (SELECT owner FROM mam_messages GROUP BY owner HAVING count(*) > $1)
    ) ranked WHERE n > $1
) old
WHERE m.owner = old.owner AND m.ts = old.ts AND m.id = old.id
"""


def _partition_name(day: datetime.date) -> str:
    return f"mam_messages_p{day:%Y%m%d}"


def _partition_day(name: str) -> datetime.date | None:
    prefix = "mam_messages_p"
    if not name.startswith(prefix):
        return None
    try:
        return datetime.datetime.strptime(name[len(prefix):], "%Y%m%d").date()
    except ValueError:
        return None


def _day_bounds(day: datetime.date) -> tuple[datetime.datetime, datetime.datetime]:
    lo = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
    return lo, lo + datetime.timedelta(days=1)
