"""devtools.localservers.LocalPostgres: initdb once, a loopback port, data kept across a
restart (the `stanzad run` profile), a clean fast shutdown."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from pathlib import Path

import asyncpg

from devtools import localservers


def _psql(pg: localservers.LocalPostgres, url: str, sql: str) -> str:
    out = subprocess.run([str(pg.bin / "psql"), "-tA", url, "-c", sql], check=True,
                         capture_output=True)
    return out.stdout.decode().strip()


def test_data_survives_a_restart_and_the_server_is_not_root() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="stanzad-pg-test-"))
    pg = localservers.LocalPostgres(workdir / "data", localservers.free_port())
    try:
        pg.start(workdir / "pg.log")
        url = pg.ensure_database("stanzad")
        assert pg.ensure_database("stanzad") == url  # a second time: found, not created
        _psql(pg, url, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        owner = _psql(pg, url, "SELECT pg_catalog.current_setting('data_directory')")
        assert Path(owner) == pg.datadir
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as the system user
            assert (pg.datadir / "PG_VERSION").stat().st_uid != 0
        pg.stop()
        assert pg.proc is None

        pg.start(workdir / "pg.log")  # the same data directory: no initdb, the row is there
        assert _psql(pg, url, "SELECT x FROM t") == "42"

        async def version() -> int:
            conn = await asyncpg.connect(url)
            try:
                return int(await conn.fetchval("SHOW server_version_num"))
            finally:
                await conn.close()

        assert asyncio.run(version()) >= 150000
    finally:
        pg.stop()
