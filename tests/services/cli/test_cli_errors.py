"""The stanzad command reports an unreachable Redis in one line, never with a traceback."""

from __future__ import annotations

import pytest

from devtools.localservers import free_port
from services.cli.main import main


def test_unreachable_redis_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    monkeypatch.setenv("STANZAD_REDIS_URL", url)
    assert main(["user", "list"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach Redis at {url}" in err
    assert "Traceback" not in err
