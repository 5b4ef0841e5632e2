"""Bulk account import through the admin API (POST /api/v1/users/import) and the CLI, against
the test session's cluster: passwords, ready SCRAM keys (RFC 5802 §3) that then log in over
SCRAM-SHA-1 and SCRAM-SHA-256, duplicates, invalid entries, the per-request bound, and the
routers' cache of missing accounts."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.admin.api import IMPORT_MAX_BYTES, MAX_IMPORT
from tests.conftest import ADMIN_TOKEN
from tests.support.cluster import ROOT, Cluster, metric_value
from tests.support.xmpp import Client, RawClient, raw_login

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def _import(http: aiohttp.ClientSession, admin_url: str, body: Any,
                  headers: dict[str, str] | None = None) -> tuple[int, Any]:
    kw: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with http.post(f"{admin_url}/api/v1/users/import", headers=headers or AUTH,
                         **kw) as resp:
        return resp.status, await resp.json()


def _jid(cluster: Cluster, prefix: str = "imp") -> str:
    return f"{prefix}{secrets.token_hex(4)}@{cluster.domain}"


def _rfc5802_keys(hash_name: str, password: str, salt: bytes, iterations: int
                  ) -> dict[str, str | int]:
    """What another server stores (RFC 5802 §3), computed here by hand, not by stanzad:
    SaltedPassword = Hi(password, salt, i); StoredKey = H(HMAC(SaltedPassword, "Client Key"));
    ServerKey = HMAC(SaltedPassword, "Server Key")."""
    salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", hash_name)
    b64 = base64.b64encode
    return {
        "salt": b64(salt).decode(),
        "iterations": iterations,
        "stored_key": b64(hashlib.new(hash_name, client_key).digest()).decode(),
        "server_key": b64(hmac.digest(salted, b"Server Key", hash_name)).decode(),
    }


def _scram(password: str, iterations: int = 4096) -> dict[str, Any]:
    return {"SCRAM-SHA-1": _rfc5802_keys("sha1", password, secrets.token_bytes(16), iterations),
            "SCRAM-SHA-256": _rfc5802_keys("sha256", password, secrets.token_bytes(16),
                                           iterations)}


def _logins(cluster: Cluster, mech: str) -> float:
    return metric_value(cluster.metrics("cm-1"), "stanzad_cm_logins_total", mechanism=mech,
                        result="success")


async def _logs_in(cluster: Cluster, jid: str, password: str, mech: str) -> bool:
    """Whether slixmpp logs in with exactly ``mech`` (counted by the connection manager)."""
    before = await asyncio.to_thread(_logins, cluster, mech)
    client = Client(f"{jid}/imp", password, mech=mech)
    try:
        await client.login("127.0.0.1", cluster.c2s_port, presence=False)
    except PermissionError:
        return False
    await client.logout()
    assert await asyncio.to_thread(_logins, cluster, mech) > before, f"not over {mech}"
    return True


async def test_import_with_passwords_creates_accounts_that_log_in(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession
) -> None:
    a, b = _jid(cluster), _jid(cluster)
    status, body = await _import(http, admin_url, {"accounts": [
        {"jid": a, "password": "pw-a"}, {"jid": b.upper(), "password": "pw-b"}]})
    assert status == 200
    assert body == {"created": 2, "exists": 0, "invalid": 0, "results": [
        {"jid": a, "result": "created"}, {"jid": b.lower(), "result": "created"}]}
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        assert b"<jid>" in await raw_login(raw, b, "pw-b")  # SASL PLAIN, RFC 4616
    finally:
        await raw.close()
    assert await _logs_in(cluster, a, "pw-a", "SCRAM-SHA-256")
    async with http.get(f"{admin_url}/api/v1/users", headers=AUTH) as resp:
        assert {a, b} <= set((await resp.json())["users"])


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
async def test_rfc5802_keys_from_another_server_log_in_over_scram(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession, mech: str
) -> None:
    """RFC 5802 §3: salt, i, StoredKey and ServerKey are all the server needs: no password
    crosses the import, and SCRAM-SHA-1 (RFC 5802) and SCRAM-SHA-256 (RFC 7677) both work;
    PLAIN (RFC 4616) is checked against the same keys."""
    jid = _jid(cluster)
    status, body = await _import(http, admin_url, [{"jid": jid, "scram": _scram("moved-pw")}])
    assert (status, body["created"]) == (200, 1), body
    assert await _logs_in(cluster, jid, "moved-pw", mech)
    assert not await _logs_in(cluster, jid, "other-pw", mech)
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        assert b"<jid>" in await raw_login(raw, jid, "moved-pw")
    finally:
        await raw.close()


async def test_existing_accounts_are_not_overwritten_and_duplicates_are_refused(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession
) -> None:
    old = _jid(cluster)
    async with http.post(f"{admin_url}/api/v1/users", headers=AUTH,
                         json={"jid": old, "password": "old-pw"}) as resp:
        assert resp.status == 201
    new = _jid(cluster)
    status, body = await _import(http, admin_url, [
        {"jid": old, "password": "new-pw"},
        {"jid": new, "scram": _scram("new-pw")},
        {"jid": new, "password": "again"},
    ])
    assert status == 200
    assert body["results"] == [
        {"jid": old, "result": "exists"},
        {"jid": new, "result": "created"},
        {"jid": new, "result": "invalid", "reason": "listed twice (first as entry 1)"},
    ]
    assert await _logs_in(cluster, old, "old-pw", "SCRAM-SHA-256")  # untouched
    assert not await _logs_in(cluster, old, "new-pw", "SCRAM-SHA-256")
    status, body = await _import(http, admin_url, [{"jid": new, "password": "x-pw"}])
    assert body["results"] == [{"jid": new, "result": "exists"}]


async def test_invalid_entries_are_reported_and_the_valid_ones_created(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession
) -> None:
    good = _jid(cluster)
    short = _scram("pw")
    short["SCRAM-SHA-256"]["stored_key"] = base64.b64encode(b"x" * 20).decode()
    weak = _scram("pw")
    weak["SCRAM-SHA-1"]["iterations"] = 1000
    entries: list[Any] = [
        {"jid": "x@elsewhere.example", "password": "pw"},
        {"jid": _jid(cluster), "scram": short},
        {"jid": good, "password": "good-pw"},
        {"jid": _jid(cluster), "scram": weak},
        {"jid": _jid(cluster), "scram": {**_scram("pw"), "SCRAM-SHA-512": {}}},
        {"jid": _jid(cluster), "password": ""},
        {"jid": "bad@@localhost", "password": "pw"},
        "just a string",
    ]
    status, body = await _import(http, admin_url, entries)
    assert status == 200
    assert (body["created"], body["exists"], body["invalid"]) == (1, 0, 7)
    results = body["results"]
    assert results[2] == {"jid": good, "result": "created"}
    reasons = [r.get("reason", "") for r in results]
    assert "this cluster serves" in reasons[0] and "localhost" in reasons[0]  # and others added
    assert "stored_key has 20 bytes, not 32" in reasons[1]
    assert "iterations must be an integer in [4096," in reasons[3]
    assert "SCRAM-SHA-512" in reasons[4]
    assert "the password is empty" in reasons[5]
    assert "not a JID" in reasons[6]
    assert reasons[7] == "not a JSON object"
    async with http.get(f"{admin_url}/api/v1/users", headers=AUTH) as resp:
        listed = set((await resp.json())["users"])
    assert good in listed
    assert not {r["jid"] for r in results if r["result"] == "invalid"} & listed


async def test_the_per_request_bound_and_bad_bodies(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession
) -> None:
    too_many = [{"jid": f"bound{i}@{cluster.domain}", "password": "pw"}
                for i in range(MAX_IMPORT + 1)]
    status, body = await _import(http, admin_url, too_many)
    assert status == 413 and f"at most {MAX_IMPORT} accounts" in body["error"]
    huge = json.dumps([{"jid": _jid(cluster), "password": "p" * (IMPORT_MAX_BYTES + 1)}])
    status, body = await _import(http, admin_url, huge.encode())
    assert status == 413 and "split the list" in body["error"]
    for bad in (b"{not json", b'{"users": []}', b'"a@localhost"'):
        status, body = await _import(http, admin_url, bad)
        assert status == 400 and isinstance(body["error"], str), bad
    status, body = await _import(http, admin_url, [], headers={"Authorization": "Bearer no"})
    assert status == 401
    # none of the refused requests created anything
    async with http.get(f"{admin_url}/api/v1/users", headers=AUTH) as resp:
        assert "bound0@localhost" not in (await resp.json())["users"]
    # a full request within the bound goes through (the body limit of the other routes,
    # 64 KiB, does not apply to the import)
    keys = _scram("pw")
    full = [{"jid": _jid(cluster, "full"), "scram": keys} for _ in range(MAX_IMPORT)]
    assert len(json.dumps(full)) > 64 * 1024
    status, body = await _import(http, admin_url, full)
    assert (status, body["created"]) == (200, MAX_IMPORT)
    metrics = await asyncio.to_thread(cluster.metrics, "admin-1")
    assert 'stanzad_admin_requests_total{code="413",operation="import_users"}' in metrics
    assert 'stanzad_admin_requests_total{code="200",operation="import_users"}' in metrics
    assert 'stanzad_admin_imported_accounts_total{result="created"}' in metrics


async def test_routers_drop_a_cached_missing_account_when_it_is_imported(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession
) -> None:
    """The router caches "no such account" (RFC 6121 §8.5.1: service-unavailable) for
    STANZAD_CACHE_TTL_S (30 s); an import publishes one session event per partition listing
    the imported JIDs, so a message sent right after the import is kept offline (§8.5.2.2.1)
    for each of them, not refused."""
    sender_jid = _jid(cluster, "sender")
    await _import(http, admin_url, [{"jid": sender_jid, "password": "s-pw"}])
    sender = Client(f"{sender_jid}/desk", "s-pw")
    await sender.login("127.0.0.1", cluster.c2s_port)
    newcomers = [_jid(cluster, "late") for _ in range(6)]  # spread over several partitions
    try:
        for jid in newcomers:
            sender.send_message(mto=jid, mbody="anyone there?", mtype="chat")
        for _ in newcomers:  # now cached: no such account
            msg = await asyncio.wait_for(sender.messages.get(), 10)
            assert msg["type"] == "error" and msg["error"]["condition"] == "service-unavailable"
        status, body = await _import(
            http, admin_url, [{"jid": jid, "scram": _scram("late-pw")} for jid in newcomers])
        assert (status, body["created"]) == (200, len(newcomers))
        for jid in newcomers:
            sender.send_message(mto=jid, mbody=f"welcome {jid}", mtype="chat")
        with pytest.raises(TimeoutError):
            msg = await asyncio.wait_for(sender.messages.get(), 1.5)
            pytest.fail(f"unexpected answer: {msg}")
        for jid in newcomers:
            client = Client(f"{jid}/phone", "late-pw")
            await client.login("127.0.0.1", cluster.c2s_port)
            try:
                got = await asyncio.wait_for(client.messages.get(), 10)
                assert got["body"] == f"welcome {jid}"
            finally:
                await client.logout()
    finally:
        await sender.logout()


def _cli_env(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in cluster.env("cli").items():
        if key.startswith("STANZAD_"):
            monkeypatch.setenv(key, value)


async def test_cli_imports_a_file_and_prints_a_summary(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from services.cli.main import main

    _cli_env(cluster, monkeypatch)
    a, b = _jid(cluster, "cli"), _jid(cluster, "cli")
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps({"accounts": [
        {"jid": a, "password": "cli-pw"}, {"jid": b, "scram": _scram("cli-pw")}]}))
    assert await asyncio.to_thread(
        main, ["user", "import", str(path), "--iterations", "4096"]) == 0
    assert capsys.readouterr().out.strip() == "created 2, already existed 0, invalid 0 (of 2)"
    assert await _logs_in(cluster, a, "cli-pw", "SCRAM-SHA-1")
    assert await _logs_in(cluster, b, "cli-pw", "SCRAM-SHA-256")

    path.write_text(json.dumps([{"jid": a, "password": "cli-pw"},
                                {"jid": "c@elsewhere", "password": "pw"}]))
    assert await asyncio.to_thread(main, ["user", "import", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == "created 0, already existed 1, invalid 1 (of 2)"
    assert f"{a}: exists" in captured.err
    assert "c@elsewhere: invalid: c@elsewhere: this cluster serves" in captured.err
    assert "localhost" in captured.err.partition("this cluster serves")[2]

    assert await asyncio.to_thread(main, ["user", "import", str(tmp_path / "none.json")]) == 1
    assert "cannot read" in capsys.readouterr().err


async def test_cli_imports_from_stdin(cluster: Cluster) -> None:
    jid = _jid(cluster, "stdin")
    doc = json.dumps([{"jid": jid, "scram": _scram("in-pw")}]).encode()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli.main", "user", "import", "-",
        env=cluster.env("cli"), cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(doc), 30)
    assert proc.returncode == 0, err
    assert out.decode().strip() == "created 1, already existed 0, invalid 0 (of 1)"
    assert await _logs_in(cluster, jid, "in-pw", "SCRAM-SHA-1")
