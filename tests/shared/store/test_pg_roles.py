"""PostgreSQL least privilege (shared/store/pg/roles.py), set up as the local and test
clusters do (devtools/localservers.py ``setup_roles``): the application role reads and
writes rows but cannot DROP, ALTER, CREATE or TRUNCATE; migrations run as the owner role."""

from __future__ import annotations

import asyncpg
import pytest

from devtools.localservers import LocalPostgres
from shared.store.pg import migrations
from shared.store.pg.database import Database, DatabaseUnavailable
from tests.support import postgres as test_postgres


async def _refused(db: Database, statement: str) -> None:
    """``statement`` fails for lack of privilege (Database wraps asyncpg's error)."""
    with pytest.raises(DatabaseUnavailable) as refused:
        await db.execute("tests", statement)
    assert isinstance(refused.value.__cause__, asyncpg.InsufficientPrivilegeError), statement


@pytest.fixture
def role_urls(postgres: LocalPostgres) -> tuple[str, str]:
    """(owner URL, application URL) of a fresh database."""
    return test_postgres.new_database_with_roles()


async def test_the_application_role_uses_rows_but_cannot_change_the_schema(
    role_urls: tuple[str, str],
) -> None:
    owner_url, app_url = role_urls
    db = Database(app_url, "tests", size=1, owner_url=owner_url)
    await db.open()  # migrates as the owner, then runs as the application role
    try:
        assert await migrations.current(db) == migrations.LATEST
        assert await db.fetchval("tests", "SELECT current_user") == "stanzad_app"
        await db.execute("tests", "INSERT INTO offline_messages (owner, stanza) VALUES ($1, $2)",
                         "a@example.org", b"<message/>")  # a bigserial: USAGE on its sequence
        await db.execute("tests", "UPDATE offline_messages SET stanza = $1", b"<message/>")
        assert await db.fetchval("tests", "SELECT count(*) FROM offline_messages") == 1
        await db.execute("tests", "DELETE FROM offline_messages")
        for statement in ("DROP TABLE accounts", "ALTER TABLE accounts ADD COLUMN x int",
                          "ALTER TABLE accounts DROP COLUMN domain", "TRUNCATE offline_messages",
                          "CREATE TABLE sneaky (x int)", "DROP INDEX accounts_by_domain"):
            await _refused(db, statement)
        tables = await db.fetch("tests", "SELECT tablename, tableowner FROM pg_tables "
                                         "WHERE schemaname = 'public'")
        assert {r["tableowner"] for r in tables} == {"stanzad_owner"}, tables
    finally:
        await db.close()


async def test_a_service_with_only_the_application_role_waits_for_the_owners_migration(
    role_urls: tuple[str, str],
) -> None:
    owner_url, app_url = role_urls
    app_only = Database(app_url, "tests", size=1)
    with pytest.raises(migrations.MigrationError, match="STANZAD_DATABASE_OWNER_URL"):
        await app_only.open()  # nothing migrated yet, and it may not
    owner = Database(owner_url, "tests", size=1)
    await owner.open()  # `stanzad db migrate` with the owner's URL does this
    await owner.close()
    await app_only.open()  # now up to date: no DDL tried
    try:
        assert await migrations.current(app_only) == migrations.LATEST
    finally:
        await app_only.close()


async def test_a_table_of_a_later_migration_is_usable_by_the_application_role(
    role_urls: tuple[str, str],
) -> None:
    """Default privileges: what the owner creates later needs no new grant."""
    owner_url, app_url = role_urls
    owner = Database(owner_url, "tests", size=1)
    await owner.open()
    app = Database(app_url, "tests", size=1)
    try:
        await owner.execute("tests", "CREATE TABLE later (id bigserial PRIMARY KEY, v text)")
        await app.open()
        await app.execute("tests", "INSERT INTO later (v) VALUES ('x')")
        assert await app.fetchval("tests", "SELECT v FROM later") == "x"
        await _refused(app, "DROP TABLE later")
    finally:
        await app.close()
        await owner.close()
