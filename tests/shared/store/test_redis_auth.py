"""Redis with an ACL, as the local and test clusters run it (devtools/localservers.py
``redis_auth``): the `default` user is off, so a client without credentials or with a wrong
password is refused; the `stanzad` user with the generated password gets in; each service
role's user (shared/store/acl.py) reaches its own keys only, and no role a dangerous
command."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from devtools import localservers
from shared.bus import permissions
from shared.store import acl, keys
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


# ---- one ACL user per role (shared/store/acl.py) ----

def _role_client(acl_redis: tuple[int, localservers.RedisAuth], role: str) -> aioredis.Redis:
    port, auth = acl_redis
    return connect(auth.url_of(role, port))


# a key of each family and the roles that use it (shared/store/acl.py says why)
FAMILIES = {
    keys.sessions("a@example.org"): {"connection_manager", "router", "presence", "roster",
                                     "pubsub"},
    keys.cm_alive("cm-1"): {"connection_manager", "router", "presence", "roster", "pubsub"},
    keys.cm_load("cm-1"): {"connection_manager", "router", "presence", "roster", "pubsub"},
    keys.CMS: {"connection_manager", "router", "presence", "roster", "pubsub"},
    keys.sm_facts("a@example.org", "sm1"): {"connection_manager"},
    keys.auth_failures_pair("a@example.org", "192.0.2.1"): {"connection_manager"},
    keys.auth_block_source("192.0.2.1"): {"connection_manager"},
    keys.partition_lease("route", 3): {"router"},
    keys.members("route"): {"router"},
    keys.handover("presence", 3): {"presence"},
    keys.presence("a@example.org"): {"presence", "pubsub", "roster", "connection_manager"},
    keys.directed_presence("a@example.org/phone"): {"presence", "connection_manager"},
    keys.reaper_lock(): {"presence"},
    keys.partition_lease("roster", 3): {"roster"},
    keys.dialback_secret(): {"s2s_gateway"},
    keys.partition_lease("s2s", 3): {"s2s_gateway"},
    keys.account("a@example.org"): {"connection_manager"},  # an older release's key: only
    # the operator, and the connection manager removing an account in band (XEP-0077 §3.2)
    keys.registrations_source("192.0.2.1"): {"connection_manager"},
    keys.muc_occupants("room@conference.example.org"): {"muc"},
    keys.partition_lease("muc", 3): {"muc"},
    keys.caps_features("QgayPKawpkPSDYmwT/WM94uAlu0="): {"pubsub"},
    keys.pep_resources("a@example.org"): {"pubsub"},
    keys.pep_remote("a@example.org"): {"pubsub"},
    keys.component_holder("bot.example.org"): {"s2s_gateway"},
    keys.upload_secret(): {"upload"},
}
SERVICE_ROLES = ("connection_manager", "router", "presence", "roster", "s2s_gateway", "muc",
                 "pubsub", "upload")


@pytest.mark.parametrize("role", SERVICE_ROLES)
async def test_each_role_reaches_its_own_keys_and_is_refused_outside_them(
    acl_redis: tuple[int, localservers.RedisAuth], role: str
) -> None:
    r = _role_client(acl_redis, role)
    try:
        for key, users in FAMILIES.items():
            if role in users:
                assert await r.exists(key) in (0, 1)
                await r.pexpire(key, 60_000)
            else:
                with pytest.raises(NoPermissionError, match=r"(?i)no permissions"):
                    await r.exists(key)
                with pytest.raises(NoPermissionError):
                    await r.set(key, b"forged")
    finally:
        await r.aclose()


@pytest.mark.parametrize("role", [*SERVICE_ROLES, "admin", "cli"])
async def test_no_role_may_run_a_dangerous_command_or_use_pub_sub(
    acl_redis: tuple[int, localservers.RedisAuth], role: str
) -> None:
    r = _role_client(acl_redis, role)
    try:
        assert await r.ping() is True
        for command in (("FLUSHALL",), ("KEYS", "*"), ("CONFIG", "GET", "dir"),
                        ("ACL", "WHOAMI"), ("DEBUG", "SLEEP", "0"), ("SHUTDOWN", "NOSAVE"),
                        ("PUBLISH", "stanzad", "x")):
            with pytest.raises(NoPermissionError):
                await r.execute_command(*command)
    finally:
        await r.aclose()


async def test_a_script_cannot_reach_keys_outside_the_role(
    acl_redis: tuple[int, localservers.RedisAuth],
) -> None:
    """Lua runs with the caller's ACL: a key passed in (or built inside) is checked."""
    r = _role_client(acl_redis, "s2s_gateway")
    try:
        lease = keys.partition_lease("s2s", 1)
        assert await r.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, lease, "g") == b"OK"
        with pytest.raises(NoPermissionError):
            await r.eval("return redis.call('GET', KEYS[1])", 1, keys.sessions("a@b"))
        with pytest.raises(ResponseError, match=r"can't access at least one of the keys"):
            await r.eval(f"return redis.call('GET', '{keys.sessions('a@b')}')", 1, lease)
    finally:
        await r.aclose()


async def test_the_admin_role_reaches_every_key(
    acl_redis: tuple[int, localservers.RedisAuth],
) -> None:
    r = _role_client(acl_redis, "admin")
    try:
        for key in FAMILIES:
            assert await r.exists(key) in (0, 1)
    finally:
        await r.aclose()


def test_every_role_has_rules_and_every_live_key_family_a_user() -> None:
    assert set(acl.ROLES) == set(permissions.ROLES)  # the same roles as on NATS
    for role in acl.ROLES:
        line = acl.user_line(role, "pw")
        assert "-@dangerous" in line and "resetchannels" in line and "&" not in line, role
    args = acl.arguments({"router": "$(REDIS_PASSWORD_ROUTER)"})
    assert args[:3] == ["--user", "default", "off"]
    assert args[3:8] == ["--user", "router", "reset", "on", ">$(REDIS_PASSWORD_ROUTER)"]
