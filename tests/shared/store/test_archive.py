"""shared.store.archive on a real PostgreSQL: batched writes with preferences applied in the
statement, daily partitions, retention, per-user caps, and a bounded queue while the
database fails."""

from __future__ import annotations

import datetime

from shared.store.archive import BATCHES, ArchiveStore, ArchiveWriter
from shared.store.pg.database import Database, connect
from shared.xmpp import archive
from shared.xmpp.archive import Prefs, Query

OWNER = "alice@localhost"
MSG = b'<message xmlns="jabber:client" type="chat"><body>x</body></message>'


def _us(day: datetime.datetime) -> int:
    return int(day.timestamp() * 1e6)


async def _partitions(db: Database) -> set[str]:
    rows = await db.fetch("t", "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON "
                               "c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
                               "WHERE p.relname = 'mam_messages'")
    return {r["relname"] for r in rows}


async def test_rows_of_one_tick_go_in_one_statement_and_preferences_filter_them(
    database_url: str,
) -> None:
    db = await connect(database_url, "tests")
    try:
        store = ArchiveStore(db, "tests")
        await store.set_prefs(OWNER, Prefs("roster", always=("friend@x.org",),
                                           never=("foe@x.org",)))
        writer = ArchiveWriter(db, "always", 100)
        statements = BATCHES.labels("ok")._value.get()
        now = _us(datetime.datetime.now(datetime.UTC))
        for i, peer in enumerate(("friend@x.org", "foe@x.org", "stranger@x.org")):
            writer.add(OWNER, archive.new_id(now + i), peer, peer, False, MSG)
        writer.add("bob@localhost", archive.new_id(now + 9), "foe@x.org", "foe@x.org", True,
                   MSG)  # no preferences: the server default (always)
        await writer.flush()
        assert BATCHES.labels("ok")._value.get() == statements + 1  # one INSERT for four
        page = await store.query(OWNER, Query())
        assert page.count == 1 and page.complete
        assert (await store.query("bob@localhost", Query())).count == 1
    finally:
        await db.close()


async def test_a_failing_database_keeps_at_most_max_pending_rows_and_drops_the_oldest(
    database_url: str,
) -> None:
    db = await connect(database_url, "tests")
    try:
        writer = ArchiveWriter(db, "always", 5)
        await db.execute("t", "ALTER TABLE mam_messages RENAME TO mam_gone")  # an outage
        now = _us(datetime.datetime.now(datetime.UTC))
        ids = [archive.new_id(now + i) for i in range(8)]
        for sid in ids:
            writer.add(OWNER, sid, "p@x.org", "p@x.org", False, MSG)
        assert len(writer) <= 5
        await db.execute("t", "ALTER TABLE mam_gone RENAME TO mam_messages")
        await writer.flush(20)
        rows = await db.fetch("t", "SELECT id FROM mam_messages ORDER BY ts, id")
        assert [r["id"] for r in rows] == ids[-5:]  # the newest kept, in order
    finally:
        await db.close()


async def test_maintain_creates_daily_partitions_moves_default_rows_and_drops_old_ones(
    database_url: str,
) -> None:
    db = await connect(database_url, "tests")
    try:
        store = ArchiveStore(db, "tests")
        today = datetime.datetime.now(datetime.UTC).replace(hour=12, minute=0, second=0,
                                                             microsecond=0)
        writer = ArchiveWriter(db, "always", 100)
        old = archive.new_id(_us(today - datetime.timedelta(days=40)))
        new = archive.new_id(_us(today))
        writer.add(OWNER, old, "p@x.org", "p@x.org", False, MSG)
        writer.add(OWNER, new, "p@x.org", "p@x.org", False, MSG)
        await writer.flush()
        # both in the default partition until daily ones exist
        assert await db.fetchval("t", "SELECT count(*) FROM mam_messages_default") == 2
        done = await store.maintain(retention_days=30, max_per_user=0)
        assert done["created"] == 4  # yesterday .. two days ahead
        parts = await _partitions(db)
        assert f"mam_messages_p{today:%Y%m%d}" in parts
        assert await db.fetchval("t", f"SELECT count(*) FROM mam_messages_p{today:%Y%m%d}") == 1
        # the 40-day-old row in the default partition is past the retention
        assert await db.fetchval("t", "SELECT count(*) FROM mam_messages_default") == 0
        # forty days later today's partition is dropped whole
        later = today + datetime.timedelta(days=40)
        done = await store.maintain(retention_days=30, max_per_user=0, now=later)
        assert done["dropped"] >= 1
        assert f"mam_messages_p{today:%Y%m%d}" not in await _partitions(db)
        assert (await store.query(OWNER, Query())).count == 0
        assert await store.maintain(30, 0, now=later) == {"created": 0, "dropped": 0,
                                                           "trimmed": 0}
    finally:
        await db.close()


async def test_maintain_cuts_an_archive_to_its_newest_rows(database_url: str) -> None:
    db = await connect(database_url, "tests")
    try:
        store = ArchiveStore(db, "tests")
        writer = ArchiveWriter(db, "always", 100)
        now = _us(datetime.datetime.now(datetime.UTC))
        ids = [archive.new_id(now + i) for i in range(10)]
        for sid in ids:
            writer.add(OWNER, sid, "p@x.org", "p@x.org", False, MSG)
        writer.add("bob@localhost", archive.new_id(now), "p@x.org", "p@x.org", False, MSG)
        await writer.flush()
        assert (await store.maintain(0, 4))["trimmed"] == 6
        page = await store.query(OWNER, Query())
        assert [r.id for r in page.rows] == ids[-4:]
        assert (await store.query("bob@localhost", Query())).count == 1
    finally:
        await db.close()


async def test_a_large_result_sets_count_is_scanned_once_then_only_its_newest_rows(
    database_url: str,
) -> None:
    """XEP-0059 §2.7: the count may be approximate when an exact one is costly.  Rows older
    than COUNT_SETTLED_S are counted once per COUNT_TTL_S; newer ones at every query."""
    db = await connect(database_url, "tests")
    try:
        store, writer = ArchiveStore(db, "tests"), ArchiveWriter(db, "always", 1000)
        owner = "counted@localhost"
        hour_ago = _us(datetime.datetime.now(datetime.UTC)) - 3600 * 10**6
        for i in range(30):
            writer.add(owner, archive.new_id(hour_ago + i), "p@x.org", "p@x.org", False, MSG)
        await writer.flush()
        assert (await store.query(owner, Query(max=10))).count == 30
        now = _us(datetime.datetime.now(datetime.UTC))
        for i in range(5):  # new messages: counted at once
            writer.add(owner, archive.new_id(now + i), "p@x.org", "p@x.org", False, MSG)
        await writer.flush()
        assert (await store.query(owner, Query(max=10))).count == 35
        # a settled row deleted meanwhile is still counted until the count is renewed
        await db.execute("t", "DELETE FROM mam_messages WHERE owner = $1 AND ts < $2", owner,
                         archive.time_of(archive.new_id(hour_ago + 1)))
        assert (await store.query(owner, Query(max=10))).count == 35
        assert (await ArchiveStore(db, "tests").query(owner, Query(max=10))).count == 34
        # another filter is another result set
        assert (await store.query(owner, Query(with_jid="q@x.org"))).count == 0
    finally:
        await db.close()


async def test_a_batch_that_meets_rows_already_written_keeps_them_once(
    database_url: str,
) -> None:
    """A retry after a commit that in fact went through: the rows are there already."""
    db = await connect(database_url, "tests")
    try:
        writer = ArchiveWriter(db, "always", 100)
        now = _us(datetime.datetime.now(datetime.UTC))
        ids = [archive.new_id(now + i) for i in range(3)]
        writer.add("again@localhost", ids[0], "p@x.org", "p@x.org", False, MSG)
        await writer.flush()
        for sid in ids:
            writer.add("again@localhost", sid, "p@x.org", "p@x.org", False, MSG)
        await writer.flush()
        rows = await db.fetch("t", "SELECT id FROM mam_messages WHERE owner = $1 "
                                   "ORDER BY ts, id", "again@localhost")
        assert [r["id"] for r in rows] == ids
    finally:
        await db.close()
