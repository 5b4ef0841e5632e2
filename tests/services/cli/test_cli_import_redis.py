"""`stanzad db import-redis`: old-format keys written to a Redis of their own, imported twice
into a real PostgreSQL; the second run imports nothing and changes nothing."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from devtools import localservers
from services.cli.main import main
from shared.xmpp.credentials import derive_credentials, to_redis_hash

ALICE, BOB, CAROL = "alice@example.org", "bob@example.org", "carol@example.org"
CREDS = derive_credentials("pw-of-alice", 4096)


@pytest.fixture
def old_redis() -> Iterator[str]:
    workdir = Path(tempfile.mkdtemp(prefix="stanzad-import-"))
    port = localservers.free_port()
    proc = localservers.start(localservers.redis_command(port, workdir, aof=False),
                              workdir / "redis.log")
    try:
        localservers.wait_port("127.0.0.1", port, proc=proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        localservers.stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _write_old_keys(url: str) -> None:
    """The keys of the Redis-only schema (shared/store/keys.py and the stores before
    PostgreSQL), exactly as they wrote them."""
    r = redis.Redis.from_url(url)
    for jid in (ALICE, BOB):
        r.hset(f"acct:{{{jid}}}", mapping={"created": b"1700000000", **to_redis_hash(CREDS)})
        r.sadd(f"accts:{jid.partition('@')[2]}", jid.partition("@")[0])
    # RFC 6121: bob in both directions, carol asked alice (hidden, pending in), dave removed
    r.hset(f"roster:{{{ALICE}}}", mapping={
        BOB: json.dumps({"n": "Bob", "g": ["Friends", "Work"], "s": "both", "o": False,
                         "i": False, "a": False, "h": False, "v": 3}),
        CAROL: json.dumps({"n": None, "g": [], "s": "none", "o": False, "i": True,
                           "a": False, "h": True, "v": 4}),
    })
    r.set(f"rosterver:{{{ALICE}}}", 5)
    r.hset(f"rostertomb:{{{ALICE}}}", "dave@example.org", 5)
    r.rpush(f"offline:{{{BOB}}}", b"<message id='1'><body>first</body></message>",
            b"<message id='2'><body>second</body></message>")
    r.set(f"vcard:{{{ALICE}}}", b'<vCard xmlns="vcard-temp"><FN>Alice</FN></vCard>')
    r.hset(f"private:{{{ALICE}}}", "storage:bookmarks",
           b'<storage xmlns="storage:bookmarks"/>')
    r.sadd(f"block:{{{BOB}}}", "spam@example.net", "example.com")
    # soft state of the old deployment: not imported
    r.hset(f"sess:{{{ALICE}}}", "phone", b"cm-1 sid 0 0")
    r.close()


async def _snapshot(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        out: dict[str, Any] = {}
        for table, order in (("accounts", "jid"), ("roster_versions", "owner"),
                             ("roster_items", "owner, contact"),
                             ("roster_tombstones", "owner, contact"),
                             ("offline_messages", "id"), ("vcards", "owner"),
                             ("private_storage", "owner, namespace"),
                             ("blocklist", "owner, jid")):
            rows = await conn.fetch(f"SELECT * FROM {table} ORDER BY {order}")
            out[table] = [{k: v for k, v in dict(r).items() if k not in ("updated_at",)}
                          for r in rows]
        return out
    finally:
        await conn.close()


def test_import_twice(database_url: str, old_redis: str, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STANZAD_DATABASE_URL", database_url)
    _write_old_keys(old_redis)
    assert main(["db", "import-redis", "--redis-url", old_redis]) == 0
    out = capsys.readouterr().out
    for line in ("account: 2 imported", "roster: 1 imported", "offline: 1 imported",
                 "vcard: 1 imported", "private: 1 imported", "blocklist: 1 imported"):
        assert line in out, out
    first = asyncio.run(_snapshot(database_url))

    accounts = {a["jid"]: a for a in first["accounts"]}
    assert set(accounts) == {ALICE, BOB}
    alice = accounts[ALICE]
    assert alice["domain"] == "example.org"
    assert alice["created_at"].timestamp() == 1700000000
    assert (alice["sha256_salt"], alice["sha256_iterations"], alice["sha256_stored_key"],
            alice["sha256_server_key"]) == (CREDS.sha256.salt, CREDS.sha256.iterations,
                                            CREDS.sha256.stored_key, CREDS.sha256.server_key)
    assert alice["sha1_stored_key"] == CREDS.sha1.stored_key
    assert first["roster_versions"] == [{"owner": ALICE, "version": 5}]
    items = {i["contact"]: i for i in first["roster_items"]}
    assert items[BOB] | {} == {
        "owner": ALICE, "contact": BOB, "name": "Bob", "groups": ["Friends", "Work"],
        "subscription": "both", "pending_out": False, "pending_in": False, "approved": False,
        "hidden": False, "version": 3}
    assert (items[CAROL]["pending_in"], items[CAROL]["hidden"], items[CAROL]["name"]) == (
        True, True, None)
    assert first["roster_tombstones"] == [
        {"owner": ALICE, "contact": "dave@example.org", "version": 5}]
    assert [(m["owner"], m["stanza"]) for m in first["offline_messages"]] == [
        (BOB, b"<message id='1'><body>first</body></message>"),
        (BOB, b"<message id='2'><body>second</body></message>")]  # oldest first
    assert [v["vcard"] for v in first["vcards"]] == [
        b'<vCard xmlns="vcard-temp"><FN>Alice</FN></vCard>']
    assert [(p["namespace"], p["element"]) for p in first["private_storage"]] == [
        ("storage:bookmarks", b'<storage xmlns="storage:bookmarks"/>')]
    assert [(b["owner"], b["jid"]) for b in first["blocklist"]] == [
        (BOB, "example.com"), (BOB, "spam@example.net")]

    assert main(["db", "import-redis", "--redis-url", old_redis]) == 0  # again: a no-op
    out = capsys.readouterr().out
    assert "account: 0 imported, 2 already imported before" in out, out
    assert "offline: 0 imported, 1 already imported before" in out, out
    assert asyncio.run(_snapshot(database_url)) == first


def test_unreachable_redis_is_one_line(database_url: str, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STANZAD_DATABASE_URL", database_url)
    url = f"redis://127.0.0.1:{localservers.free_port()}/0"
    assert main(["db", "import-redis", "--redis-url", url]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Redis" in err and "Traceback" not in err
