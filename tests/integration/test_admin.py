"""The admin API over real sockets, as a process of the test cluster, and the CLI's kick."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.conftest import ADMIN_TOKEN, Users
from tests.support.cluster import ROOT, Cluster
from tests.support.xmpp import Client, RawClient, raw_login

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def _call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url, headers=kw.pop("headers", AUTH), **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body


async def _session_jids(http: aiohttp.ClientSession, admin_url: str) -> set[str]:
    status, body = await _call(http, "GET", f"{admin_url}/api/v1/sessions")
    assert status == 200
    return {s["jid"] for s in body["sessions"]}


async def _wait_gone(http: aiohttp.ClientSession, admin_url: str, jid: str) -> None:
    for _ in range(100):
        if jid not in await _session_jids(http, admin_url):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{jid} still listed")


async def _login_fails(cluster: Cluster, jid: str, password: str) -> None:
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        with pytest.raises(PermissionError):
            await raw_login(raw, jid, password)
    finally:
        await raw.close()


def _new_jid(cluster: Cluster) -> str:
    return f"adm{secrets.token_hex(4)}@{cluster.domain}"


async def test_every_route_wants_the_bearer_token(
    admin_url: str, http: aiohttp.ClientSession
) -> None:
    for method, path in (("GET", "/api/v1/status"), ("GET", "/api/v1/sessions"),
                         ("POST", "/api/v1/users"), ("DELETE", "/api/v1/users/a@localhost"),
                         ("DELETE", "/api/v1/sessions/a@localhost%2Fr")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN}):
            status, body = await _call(http, method, admin_url + path, headers=headers)
            assert status == 401, (method, path, headers)
            assert body == {"error": "missing or wrong bearer token"}
    status, _ = await _call(http, "GET", f"{admin_url}/api/v1/status")
    assert status == 200


async def test_status_shows_routers_partitions_and_connection_managers(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession
) -> None:
    status, body = await _call(http, "GET", f"{admin_url}/api/v1/status")
    assert status == 200
    assert body["partitions"] == cluster.partitions
    assert body["routers"]["router-1"] > 0
    assert sum(body["routers"].values()) + body["unowned_partitions"] == cluster.partitions
    cms = {cm["id"]: cm for cm in body["connection_managers"]}
    assert cms["cm-1"]["alive"] is True
    assert 0 < cms["cm-1"]["heartbeat_ttl_s"] <= 6
    assert cms["cm-1"]["c2s"] == f"127.0.0.1:{cluster.c2s_port}"  # where it listens


async def test_create_login_list_kick_delete(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession
) -> None:
    jid = _new_jid(cluster)
    users = f"{admin_url}/api/v1/users"
    status, body = await _call(http, "POST", users, json={"jid": jid, "password": "pw-1"})
    assert (status, body) == (201, {"jid": jid})
    status, _ = await _call(http, "POST", users, json={"jid": jid, "password": "pw-2"})
    assert status == 409
    _, body = await _call(http, "GET", users)
    assert jid in body["users"]

    client = Client(f"{jid}/desk", "pw-1")
    stream_errors: asyncio.Queue[str] = asyncio.Queue()
    gone = asyncio.Event()
    client.add_event_handler("stream_error", lambda e: stream_errors.put_nowait(e["condition"]))
    client.add_event_handler("disconnected", lambda _: gone.set())
    await client.login("127.0.0.1", cluster.c2s_port)
    try:
        full = f"{jid}/desk"
        assert full in await _session_jids(http, admin_url)
        status, body = await _call(http, "GET", f"{admin_url}/api/v1/sessions/{quote(full)}")
        assert status == 200 and body["cm_id"] == "cm-1" and body["cm_alive"] is True

        status, body = await _call(
            http, "DELETE", f"{admin_url}/api/v1/sessions/{quote(full, safe='')}"
        )
        assert status == 202 and body["kicked"]["jid"] == full
        assert await asyncio.wait_for(stream_errors.get(), 10) == "policy-violation"
        await asyncio.wait_for(gone.wait(), 10)  # the server closed the stream
        await _wait_gone(http, admin_url, full)
        status, _ = await _call(http, "DELETE", f"{admin_url}/api/v1/sessions/{quote(full)}")
        assert status == 404
    finally:
        if not gone.is_set():
            await client.logout()

    status, body = await _call(http, "DELETE", f"{users}/{jid}")
    assert (status, body) == (200, {"deleted": jid, "kicked": []})
    status, _ = await _call(http, "DELETE", f"{users}/{jid}")
    assert status == 404
    await _login_fails(cluster, jid, "pw-1")


async def test_delete_user_kicks_open_sessions(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession, users: Users
) -> None:
    jid, pw = await users.create("gone")
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(raw, jid, pw, resource="r1")
        status, body = await _call(http, "DELETE", f"{admin_url}/api/v1/users/{jid}")
        assert (status, body["kicked"]) == (200, [f"{jid}/r1"])
        closed = await raw.read_all()
        assert b"<policy-violation" in closed and b"</stream:stream>" in closed
    finally:
        await raw.close()


async def test_change_password(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession, users: Users
) -> None:
    jid, old = await users.create("pw")
    url = f"{admin_url}/api/v1/users/{jid}/password"
    assert (await _call(http, "PUT", url, json={"password": "new-pw"}))[0] == 204
    await _login_fails(cluster, jid, old)
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        assert b"<jid>" in await raw_login(raw, jid, "new-pw")
    finally:
        await raw.close()
    missing = f"{admin_url}/api/v1/users/nobody-{secrets.token_hex(3)}@localhost/password"
    assert (await _call(http, "PUT", missing, json={"password": "x-pw"}))[0] == 404


@pytest.mark.parametrize(
    ("method", "path", "kw", "expected"),
    [
        ("POST", "/api/v1/users", {"json": {"jid": "a@elsewhere.example", "password": "p"}}, 400),
        ("POST", "/api/v1/users", {"json": {"jid": "a@localhost/res", "password": "p"}}, 400),
        ("POST", "/api/v1/users", {"json": {"jid": "a@localhost", "password": ""}}, 400),
        ("POST", "/api/v1/users", {"json": {"jid": "a@localhost"}}, 400),
        ("POST", "/api/v1/users", {"data": b"{not json"}, 400),
        ("DELETE", "/api/v1/sessions/a@localhost", {}, 400),  # not a full JID
        ("DELETE", "/api/v1/sessions/nobody@localhost%2Fr", {}, 404),
        ("GET", "/api/v1/sessions?limit=x", {}, 400),
        ("GET", "/api/v1/nothing", {}, 404),
    ],
)
async def test_bad_requests_get_json_errors(
    admin_url: str, http: aiohttp.ClientSession, method: str, path: str, kw: dict[str, Any],
    expected: int,
) -> None:
    status, body = await _call(http, method, admin_url + path, **kw)
    assert status == expected
    assert isinstance(body["error"], str)


async def test_admin_metrics_count_requests_by_operation_and_code(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession
) -> None:
    await _call(http, "GET", f"{admin_url}/api/v1/status", headers={})
    text = await asyncio.to_thread(cluster.metrics, "admin-1")
    assert 'stanzad_admin_requests_total{code="401",operation="status"}' in text


def test_refuses_an_empty_token_off_loopback(cluster: Cluster) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "services.admin"],
        env=cluster.env(STANZAD_ADMIN_HOST="0.0.0.0", STANZAD_ADMIN_TOKEN="",
                        STANZAD_ADMIN_PORT="0", STANZAD_HTTP_PORT="0"),
        cwd=ROOT, capture_output=True, timeout=30,
    )
    assert proc.returncode == 2
    assert b"STANZAD_ADMIN_TOKEN" in proc.stderr


async def test_cli_kicks_a_session_over_nats(cluster: Cluster, users: Users) -> None:
    jid, pw = await users.create("cli")
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(raw, jid, pw, resource="phone")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli.main", "sessions", "kick", f"{jid}/phone",
            env=cluster.env("cli"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        assert out.decode().strip() == f"kicked {jid}/phone on cm-1"
        assert b"<policy-violation" in await raw.read_all()
    finally:
        await raw.close()


async def test_cli_status_sessions_and_users(
    cluster: Cluster, users: Users, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from services.cli.main import main

    for key, value in cluster.env("cli").items():
        if key.startswith("STANZAD_"):
            monkeypatch.setenv(key, value)
    jid, pw = await users.create("clils")
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(raw, jid, pw, resource="tab")
        assert await asyncio.to_thread(main, ["sessions"]) == 0
        port = raw.writer.get_extra_info("sockname")[1] if raw.writer else 0
        listed = capsys.readouterr().out
        assert f"  {jid}/tab  (priority 0, not available, from 127.0.0.1:{port})" in listed
        assert await asyncio.to_thread(main, ["status"]) == 0
        out = capsys.readouterr().out
        assert "routers: router-1" in out
        assert f"cm-1 (alive, c2s 127.0.0.1:{cluster.c2s_port}, " in out
        new = _new_jid(cluster)
        assert await asyncio.to_thread(
            main, ["user", "add", new, "--password", "p-w", "--iterations", "4096"]) == 0
        assert await asyncio.to_thread(main, ["user", "list"]) == 0
        assert new in capsys.readouterr().out.split()
        assert await asyncio.to_thread(main, ["user", "add", "x@elsewhere", "--password",
                                              "p"]) == 1
        err = capsys.readouterr().err  # localhost, with any domain another test added
        assert "this cluster serves" in err and "localhost" in err
        assert await asyncio.to_thread(main, ["user", "delete", jid]) == 0
        assert f"kicked {jid}/tab" in capsys.readouterr().out
        assert b"<policy-violation" in await raw.read_all()
    finally:
        await raw.close()


async def test_routers_see_account_creation_and_deletion_at_once(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession, users: Users
) -> None:
    """Routers cache whether an account exists (STANZAD_CACHE_TTL_S, 30 s): creating or
    deleting one publishes a session event so that they do not wait for the entry to expire.
    RFC 6121 §8.5.1: no account -> service-unavailable; an account with no session -> offline."""
    alice_jid, alice_pw = await users.create("alice")
    alice = Client(f"{alice_jid}/desk", alice_pw)
    await alice.login("127.0.0.1", cluster.c2s_port)
    jid = _new_jid(cluster)
    users_url = f"{admin_url}/api/v1/users"

    async def no_answer_to(body: str) -> None:
        alice.send_message(mto=jid, mbody=body, mtype="chat")
        with pytest.raises(TimeoutError):
            msg = await asyncio.wait_for(alice.messages.get(), 1.5)
            pytest.fail(f"unexpected answer: {msg}")

    async def unavailable(body: str) -> None:
        alice.send_message(mto=jid, mbody=body, mtype="chat")
        msg = await asyncio.wait_for(alice.messages.get(), 10)
        assert msg["type"] == "error" and msg["error"]["condition"] == "service-unavailable"

    try:
        await unavailable("anyone there?")  # the router now caches: no such account
        status, _ = await _call(http, "POST", users_url, json={"jid": jid, "password": "pw"})
        assert status == 201
        await no_answer_to("while you were away")  # kept offline, not refused
        newcomer = Client(f"{jid}/phone", "pw")
        await newcomer.login("127.0.0.1", cluster.c2s_port)
        try:
            got = await asyncio.wait_for(newcomer.messages.get(), 10)
            assert got["body"] == "while you were away"
        finally:
            await newcomer.logout()
        await no_answer_to("stored")  # offline again: the router caches "exists"
        status, _ = await _call(http, "DELETE", f"{users_url}/{jid}")
        assert status == 200
        await unavailable("still there?")  # not stored for a deleted account
    finally:
        await alice.logout()
