"""Redis with an ACL, as the local and test clusters run it (devtools/localservers.py
``redis_auth``): the `default` user is off, so a client without credentials or with a wrong
password is refused; the `stanzad` user with the generated password gets in."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError

from devtools import localservers
from shared.store.redis import connect, redacted


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[tuple[int, localservers.RedisAuth]]:
    workdir = Path(tempfile.mkdtemp(prefix="stanzad-redis-auth-"))
    port = localservers.free_port()
    auth = localservers.redis_auth(workdir)
    proc = localservers.start(
        localservers.redis_command(port, workdir, aof=False, config=auth.config),
        workdir / "redis.log",
    )
    try:
        localservers.wait_port("127.0.0.1", port, proc=proc)
        yield port, auth
    finally:
        localservers.stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def stanzad_client(
    acl_redis: tuple[int, localservers.RedisAuth],
) -> AsyncIterator[aioredis.Redis]:
    port, auth = acl_redis
    r = connect(auth.url(port))
    yield r
    await r.aclose()


def _exchange(port: int, *commands: bytes) -> list[bytes]:
    """Each inline command on one raw connection, and the first line of each reply: the
    server's own error codes, which redis-py folds into AuthenticationError."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        f = sock.makefile("rb")
        for command in commands:
            sock.sendall(command + b"\r\n")
            replies.append(f.readline().rstrip(b"\r\n"))
    return replies


def test_a_client_without_credentials_is_refused_with_noauth(
    acl_redis: tuple[int, localservers.RedisAuth],
) -> None:
    port, _ = acl_redis
    # the `default` user is off: every command but AUTH/HELLO is refused
    for reply in _exchange(port, b"PING", b"SET stanzad:probe x", b"KEYS *"):
        assert reply.startswith(b"-NOAUTH"), reply


def test_the_default_user_or_a_wrong_password_is_refused_with_wrongpass(
    acl_redis: tuple[int, localservers.RedisAuth],
) -> None:
    port, auth = acl_redis
    replies = _exchange(port, b"AUTH " + auth.password.encode(),  # as `default`
                        b"AUTH default " + auth.password.encode(),
                        b"AUTH stanzad not-" + auth.password.encode(), b"PING")
    assert [r.split()[0] for r in replies] == [b"-WRONGPASS"] * 3 + [b"-NOAUTH"]


@pytest.mark.parametrize("user", ["stanzad", "default"])
async def test_the_client_library_refuses_to_go_on_without_valid_credentials(
    acl_redis: tuple[int, localservers.RedisAuth], user: str
) -> None:
    port, auth = acl_redis
    urls = [f"redis://127.0.0.1:{port}/0",
            f"redis://{user}:{'not-' if user == 'stanzad' else ''}{auth.password}@127.0.0.1:"
            f"{port}/0"]
    for url in urls:
        r = connect(url)
        try:
            with pytest.raises(AuthenticationError):
                await r.ping()
        finally:
            await r.aclose()


async def test_the_stanzad_user_reads_and_writes(stanzad_client: aioredis.Redis) -> None:
    r = stanzad_client
    await r.set("stanzad:probe", b"x")
    assert await r.get("stanzad:probe") == b"x"
    assert await r.acl_whoami() == "stanzad"


def test_the_password_is_kept_across_restarts_and_private(tmp_path: Path) -> None:
    first = localservers.redis_auth(tmp_path)
    again = localservers.redis_auth(tmp_path)
    assert again.password == first.password and len(first.password) >= 24
    for name in (localservers.REDIS_PASSWORD, localservers.REDIS_CONFIG):
        assert (tmp_path / name).stat().st_mode & 0o077 == 0, name
    config = first.config.read_text()
    assert "user default off" in config.splitlines()


def test_messages_show_the_url_without_its_password() -> None:
    url = "redis://stanzad:s3cret@redis:6379/0"
    assert redacted(url) == "redis://stanzad:***@redis:6379/0"
    assert "s3cret" not in redacted(url)
    assert redacted("redis://redis:6379/0") == "redis://redis:6379/0"
