"""The stanzad command reports an unreachable Redis in one line, never with a traceback nor
the password of its URL; it finds the local cluster's Redis password by itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools import localservers
from devtools.localservers import free_port
from services.cli.devcluster import local_redis_url
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


def test_the_error_does_not_show_the_redis_password(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("STANZAD_REDIS_URL", f"redis://stanzad:pw-not-to-print@127.0.0.1:{port}/0")
    monkeypatch.setenv("STANZAD_DATABASE_URL", database_url)
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach Redis at redis://stanzad:***@127.0.0.1:{port}/0" in err
    assert "pw-not-to-print" not in err


def test_the_cli_falls_back_to_the_local_clusters_redis_password(tmp_path: Path) -> None:
    """As for NATS: a URL without credentials to this machine gets those `stanzad run`
    generated under var/redis; a URL with credentials or to another host is left alone."""
    plain = "redis://127.0.0.1:16379/0"
    assert local_redis_url(tmp_path, plain) == plain  # no local cluster has run here
    auth = localservers.redis_auth(tmp_path / "redis")
    cli = auth.passwords["cli"]  # the CLI's own ACL user (shared/store/acl.py)
    assert local_redis_url(tmp_path, plain) == f"redis://cli:{cli}@127.0.0.1:16379/0"
    for url in ("redis://other:pw@127.0.0.1:16379/0", "redis://redis.example.net:6379/0"):
        assert local_redis_url(tmp_path, url) == url
