"""The stanzad command reports an unreachable Redis in one line, never with a traceback."""

from __future__ import annotations

import pytest

from devtools.localservers import free_port
from services.cli.main import main


def test_unreachable_redis_is_a_clear_error(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    monkeypatch.setenv("STANZAD_REDIS_URL", url)
    monkeypatch.setenv("STANZAD_DATABASE_URL", database_url)  # accounts are there
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach Redis at {url}" in err
    assert "Traceback" not in err
