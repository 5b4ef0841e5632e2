"""Fixtures of the store tests: a pool on the session's PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.store.pg.database import Database


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, "tests", size=2)
    await database.open()
    yield database
    await database.close()
