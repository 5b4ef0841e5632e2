"""`stanzad db migrate|status|downgrade` on a real PostgreSQL; an unreachable one is one line."""

from __future__ import annotations

import pytest

from devtools.localservers import free_port
from services.cli.main import main
from shared.store.pg.migrations import LATEST


def test_migrate_twice_then_downgrade(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STANZAD_DATABASE_URL", database_url)
    assert main(["db", "status"]) == 0
    assert "schema version 0" in capsys.readouterr().out
    assert main(["db", "migrate"]) == 0
    out = capsys.readouterr().out
    assert "applied " + ", ".join(str(v) for v in range(1, LATEST + 1)) in out
    assert f"schema version {LATEST}" in out
    assert main(["db", "migrate"]) == 0  # idempotent
    assert "nothing to apply" in capsys.readouterr().out
    assert main(["db", "downgrade", "0"]) == 0
    assert "schema version 0" in capsys.readouterr().out
    assert main(["db", "migrate", "--to", "1"]) == 0
    assert "schema version 1" in capsys.readouterr().out
    assert main(["db", "downgrade", str(LATEST + 1)]) == 1
    assert "no migration" in capsys.readouterr().err


def test_unreachable_postgres_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STANZAD_DATABASE_URL", f"postgresql://x:pw@127.0.0.1:{free_port()}/db")
    monkeypatch.setenv("STANZAD_DB_TIMEOUT_S", "2")
    assert main(["db", "migrate"]) == 1
    err = capsys.readouterr().err
    assert "is not reachable" in err and "Traceback" not in err and "pw" not in err
