"""shared.store.pg's metrics on a real PostgreSQL: pool connections, latency by statement
name, errors by kind, connected."""

from __future__ import annotations

import asyncpg
import pytest
from prometheus_client import REGISTRY

from shared.runtime.metrics import DB_ERROR_KINDS, flush_tallies
from shared.store.pg.database import Database, DatabaseUnavailable, connect, error_kind

SERVICE = "pg-metrics-test"


def _value(name: str, **labels: str) -> float:
    flush_tallies()
    return REGISTRY.get_sample_value(name, {"service": SERVICE, **labels}) or 0.0


def _errors(operation: str, kind: str) -> float:
    return _value("stanzad_store_db_errors_total", operation=operation, kind=kind)


async def test_pool_gauges_follow_the_connections_in_use(database_url: str) -> None:
    db = await connect(database_url, SERVICE, size=3, migrate=False)
    try:
        assert _value("stanzad_store_db_pool_max_connections") == 3
        assert _value("stanzad_store_db_connected") == 1
        async with db.connection("hold-1"), db.connection("hold-2"):
            assert _value("stanzad_store_db_pool_connections", kind="in_use") == 2
        assert _value("stanzad_store_db_pool_connections", kind="in_use") == 0
        assert _value("stanzad_store_db_pool_connections", kind="idle") >= 1
    finally:
        await db.close()
    assert _value("stanzad_store_db_pool_connections", kind="idle") == 0
    assert _value("stanzad_store_db_connected") == 0


async def test_latency_is_observed_by_statement_name(database_url: str) -> None:
    db = await connect(database_url, SERVICE, migrate=False)
    before = _value("stanzad_store_db_query_duration_seconds_count", operation="named-one")
    try:
        for _ in range(3):
            await db.fetchval("named-one", "SELECT 1")
    finally:
        await db.close()
    after = _value("stanzad_store_db_query_duration_seconds_count", operation="named-one")
    assert after - before == 3
    assert _value("stanzad_store_db_query_duration_seconds_bucket", operation="named-one",
                  le="+Inf") == after


async def test_errors_are_counted_by_kind(database_url: str) -> None:
    db = await connect(database_url, SERVICE, size=1, timeout_s=0.5, migrate=False)
    try:
        await db.execute("setup", "CREATE TABLE t (k int PRIMARY KEY)")
        await db.execute("insert", "INSERT INTO t VALUES (1)")
        before = {k: _errors(op, k) for op, k in
                  [("insert", "constraint"), ("bad", "server"), ("held", "timeout"),
                   ("cast", "data")]}
        with pytest.raises(asyncpg.UniqueViolationError):  # the caller sees it
            await db.execute("insert", "INSERT INTO t VALUES (1)")
        with pytest.raises(DatabaseUnavailable):
            await db.execute("bad", "SELECT * FROM no_such_table")
        with pytest.raises(asyncpg.DataError):
            await db.fetchval("cast", "SELECT $1::int", "not a number")
        async with db.connection("hold"):
            with pytest.raises(DatabaseUnavailable):
                await db.fetchval("held", "SELECT 1")  # no pooled connection in time
        assert _errors("insert", "constraint") - before["constraint"] == 1
        assert _errors("bad", "server") - before["server"] == 1
        assert _errors("cast", "data") - before["data"] == 1
        assert _errors("held", "timeout") - before["timeout"] == 1
        assert await db.ping()  # a busy pool is not a lost server
        assert _value("stanzad_store_db_connected") == 1
    finally:
        await db.close()


async def test_a_closed_pool_counts_as_unreachable() -> None:
    db = Database("postgresql://nobody@127.0.0.1:1/none", SERVICE)
    before = _errors("never-opened", "unreachable")
    with pytest.raises(DatabaseUnavailable):
        await db.fetchval("never-opened", "SELECT 1")
    assert _errors("never-opened", "unreachable") - before == 1


def test_error_kinds_are_the_documented_ones() -> None:
    examples = [TimeoutError(), ConnectionRefusedError(), asyncpg.UniqueViolationError(),
                asyncpg.DataError(), asyncpg.UndefinedTableError(),
                asyncpg.ConnectionDoesNotExistError(), DatabaseUnavailable()]
    kinds = [error_kind(e) for e in examples]
    assert kinds == ["timeout", "unreachable", "constraint", "data", "server", "unreachable",
                     "unreachable"]
    assert set(kinds) == set(DB_ERROR_KINDS)
    assert error_kind(ValueError()) is None
