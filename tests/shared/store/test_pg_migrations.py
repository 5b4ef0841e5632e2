"""shared.store.pg: the pool's errors and the schema migrations, on a real PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from devtools import localservers
from shared.store.pg import migrations
from shared.store.pg.database import Database, DatabaseUnavailable, connect, redact


async def _tables(db: Database) -> set[str]:
    rows = await db.fetch("t", "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows} - {"schema_migrations"}


# the tables each migration adds (a new migration adds its line here)
ADDS = {
    1: {"accounts"},
    2: {"roster_versions", "roster_items", "roster_tombstones"},
    3: {"offline_messages", "vcards", "private_storage", "blocklist"},
    4: {"redis_imports"},
    5: {"mam_messages", "mam_messages_default", "mam_prefs"},
    6: {"muc_rooms", "muc_affiliations"},
    7: {"pubsub_nodes", "pubsub_items", "pubsub_affiliations", "pubsub_subscriptions"},
    8: {"push_registrations", "last_activity"},
    9: {"upload_files"},
    10: {"domains"},
    11: {"fast_tokens"},
}
VERSIONS = [m.version for m in migrations.MIGRATIONS]


def _below(version: int) -> list[int]:
    """The versions before ``version``."""
    return [v for v in VERSIONS if v < version]


def test_every_migration_is_listed_here() -> None:
    assert sorted(ADDS) == [m.version for m in migrations.MIGRATIONS]
    # numbered 1, 2, 3... in order with no gap: a gap means a migration was lost in a merge
    assert list(range(1, len(VERSIONS) + 1)) == VERSIONS and VERSIONS[-1] == migrations.LATEST


@pytest.mark.parametrize("version", [m.version for m in migrations.MIGRATIONS])
async def test_each_migration_up_and_down(database_url: str, version: int) -> None:
    db = await connect(database_url, "tests", migrate=False)
    try:
        previous = max(_below(version), default=0)
        assert await migrations.migrate(db, previous) == _below(version)
        before = await _tables(db)
        assert await migrations.migrate(db, version) == [version]
        assert await _tables(db) == before | ADDS[version]
        assert await migrations.current(db) == version
        assert await migrations.downgrade(db, previous) == [version]
        assert await _tables(db) == before
        assert await migrations.current(db) == previous
        assert await migrations.migrate(db, version) == [version]  # and up again
    finally:
        await db.close()


async def test_migrate_is_idempotent_and_connect_migrates(database_url: str) -> None:
    db = await connect(database_url, "tests")  # migrates to the latest
    try:
        assert await migrations.current(db) == migrations.LATEST
        assert await migrations.migrate(db) == []
        assert await _tables(db) == set().union(*ADDS.values())
        assert await migrations.downgrade(db, 0) == VERSIONS[::-1]
        assert await _tables(db) == set()
    finally:
        await db.close()


async def test_many_processes_migrating_at_once_apply_each_migration_once(
    database_url: str,
) -> None:
    """The advisory lock: eight pools race; every migration is applied by exactly one."""
    pools = [await connect(database_url, "tests", migrate=False, size=1) for _ in range(8)]
    try:
        results = await asyncio.gather(*(migrations.migrate(db) for db in pools))
        applied = sorted(v for r in results for v in r)
        assert applied == [m.version for m in migrations.MIGRATIONS]
        rows = await pools[0].fetch("t", "SELECT version FROM schema_migrations")
        assert sorted(r["version"] for r in rows) == applied
    finally:
        for db in pools:
            await db.close()


async def test_a_newer_schema_is_left_alone(database_url: str) -> None:
    db = await connect(database_url, "tests")
    try:
        await db.execute("t", "INSERT INTO schema_migrations (version, name) VALUES (999, 'x')")
        assert await migrations.migrate(db) == []
        with pytest.raises(migrations.MigrationError):
            await migrations.downgrade(db, 0)
    finally:
        await db.close()


async def test_unreachable_postgres_is_a_clear_error() -> None:
    port = localservers.free_port()  # nothing listens there
    url = f"postgresql://stanzad:secret@127.0.0.1:{port}/stanzad"
    with pytest.raises(DatabaseUnavailable) as caught:
        await connect(url, "tests", timeout_s=2)
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "STANZAD_DATABASE_URL" in message
    assert "secret" not in message
    assert redact(url) == f"postgresql://stanzad:***@127.0.0.1:{port}/stanzad"


async def test_a_lost_server_fails_queries_without_hanging(database_url: str) -> None:
    """A query on a pool whose every connection is taken fails after the pool timeout."""
    db = await connect(database_url, "tests", size=1, timeout_s=0.5)
    try:
        async with db.connection("hold"):
            with pytest.raises(DatabaseUnavailable):
                await db.fetchval("t", "SELECT 1")
        assert await db.ping()
    finally:
        await db.close()
