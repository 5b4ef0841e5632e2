"""NATS with the identities of shared/bus/permissions.py, rendered by devtools into a real
nats-server's configuration: a client without (or with wrong) credentials is refused, and a
role's identity cannot subscribe to or publish on another role's subjects."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from devtools import localservers
from shared.bus import permissions, subjects
from shared.bus.client import Bus
from tests.shared.bus.test_client import _until

TIMEOUT_S = 30.0  # hang guard only


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[int, localservers.NatsAuth]]:
    port = localservers.free_port()
    with tempfile.TemporaryDirectory(prefix="stanzad-nats-auth-") as workdir:
        auth = localservers.nats_auth(Path(workdir))
        proc = localservers.start(localservers.nats_command(port, Path(workdir), auth.config))
        try:
            localservers.wait_port("127.0.0.1", port, proc=proc)
            yield port, auth
        finally:
            localservers.stop(proc)


class Role:
    """A plain nats-py client logged in as one role, collecting the server's errors."""

    def __init__(self) -> None:
        self.nc = Client()
        self.errors: list[str] = []
        self.violation = asyncio.Event()

    async def error(self, exc: Exception) -> None:
        self.errors.append(str(exc))
        if "permissions violation" in str(exc):
            self.violation.set()


Login = Callable[[str], Awaitable[Role]]


@pytest.fixture
async def login(server: tuple[int, localservers.NatsAuth]) -> AsyncIterator[Login]:
    port, auth = server
    clients: list[Role] = []

    async def connect(role: str) -> Role:
        r = Role()
        await r.nc.connect(f"nats://127.0.0.1:{port}", user=role, password=auth.passwords[role],
                           error_cb=r.error, allow_reconnect=False, connect_timeout=5)
        clients.append(r)
        return r

    yield connect
    for r in clients:
        await r.nc.close()


def test_every_role_of_the_issue_has_an_identity_and_only_the_cm_reads_cm_subjects() -> None:
    assert {"connection_manager", "router", "presence", "roster", "s2s_gateway", "admin",
            "cli"} <= set(permissions.ROLES)
    readers = {r for r, p in permissions.ROLES.items() if permissions.CM in p.subscribe}
    assert readers == {"connection_manager", "connection_manager_router"}
    assert permissions.CM == "stanzad.cm.*"
    assert permissions.ROUTE == subjects.every(subjects.route(7)) == "stanzad.route.*"


def test_a_role_without_subscriptions_is_denied_all_rather_than_allowed_all() -> None:
    block = permissions.authorization({"admin": "pw"})
    users = block["users"]
    assert isinstance(users, list)
    assert users[0]["permissions"]["subscribe"] == {"deny": [">"]}


@pytest.mark.parametrize("credentials", [{}, {"user": "router", "password": "wrong"}],
                         ids=["none", "wrong-password"])
async def test_a_client_without_valid_credentials_is_refused(
    server: tuple[int, localservers.NatsAuth], credentials: dict[str, str]
) -> None:
    port, _ = server
    with pytest.raises(NatsError) as refused:
        nc = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False,
                                max_reconnect_attempts=0, connect_timeout=5, **credentials)
        await nc.close()
    assert "authorization violation" in str(refused.value).lower()


async def test_credentials_in_the_url_are_accepted(
    server: tuple[int, localservers.NatsAuth],
) -> None:
    port, auth = server
    got: list[tuple[str, bytes]] = []

    async def handler(batch: list[tuple[str, bytes]]) -> None:
        got.extend(batch)

    rx = Bus(f"nats://127.0.0.1:{port}", "rx", handler, user="connection_manager",
             password=auth.passwords["connection_manager"])
    tx = Bus(f"nats://router:{auth.passwords['router']}@127.0.0.1:{port}", "tx")
    await asyncio.wait_for(rx.connect(), TIMEOUT_S)
    await asyncio.wait_for(tx.connect(), TIMEOUT_S)
    try:
        await rx.subscribe(subjects.connection_manager("cm-a"))
        await rx.flush()
        await tx.publish(subjects.connection_manager("cm-a"), b"delivery")
        await tx.flush()
        await _until(lambda: bool(got), TIMEOUT_S)
        assert got == [("stanzad.cm.cm-a", b"delivery")]
    finally:
        await tx.close()
        await rx.close()


async def test_a_connection_manager_cannot_subscribe_to_the_routers_subjects(login: Login) -> None:
    cm = await login("connection_manager")
    router = await login("router")
    seen: list[str] = []

    async def on_msg(msg: Msg) -> None:
        seen.append(msg.subject)

    await cm.nc.subscribe(permissions.ROUTE, cb=on_msg)
    await cm.nc.flush()
    await asyncio.wait_for(cm.violation.wait(), TIMEOUT_S)
    assert any('subscription to "stanzad.route.*"' in e for e in cm.errors), cm.errors
    # the router's stanzas do not reach it; its own subject still does
    await cm.nc.subscribe(subjects.connection_manager("cm-a"), cb=on_msg)
    await cm.nc.flush()
    await router.nc.publish(subjects.route(3), b"stanza")
    await router.nc.publish(subjects.connection_manager("cm-a"), b"delivery")
    await router.nc.flush()
    await _until(lambda: bool(seen), TIMEOUT_S)
    await cm.nc.flush()
    assert seen == ["stanzad.cm.cm-a"]
    assert not router.errors


@pytest.mark.parametrize("subject", [subjects.s2s(0), "_INBOX.x", "stanzad.other.0"])
async def test_a_connection_manager_cannot_publish_on_another_roles_subject(
    login: Login, subject: str
) -> None:
    cm = await login("connection_manager")
    await cm.nc.publish(subject, b"forged")
    await cm.nc.flush()
    await asyncio.wait_for(cm.violation.wait(), TIMEOUT_S)
    assert any(f'publish to "{subject.lower()}"' in e for e in cm.errors), cm.errors
    assert cm.nc.is_connected  # refused, not disconnected: its own traffic goes on


async def test_the_admin_identity_cannot_read_anything(login: Login) -> None:
    admin = await login("admin")
    await admin.nc.subscribe(subjects.connection_manager("cm-a"))
    await admin.nc.flush()
    await asyncio.wait_for(admin.violation.wait(), TIMEOUT_S)
    assert any("subscription to" in e for e in admin.errors), admin.errors
