"""Roster import (`stanzad roster import`, POST /api/v1/rosters/import) against the test
session's cluster: into an offline account (the items are there at the next login, RFC 6121
§2.2), into an online one (each item is pushed, §2.1.6), re-imported (items replaced), and
bad input refused with a reason that names the entry."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from lxml import etree

from tests.conftest import ADMIN_TOKEN
from tests.support.cluster import Cluster
from tests.support.xmpp import RawClient, raw_login

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROSTER = "{jabber:iq:roster}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def _account(http: aiohttp.ClientSession, admin_url: str, cluster: Cluster) -> str:
    jid = f"rimp{secrets.token_hex(4)}@{cluster.domain}"
    async with http.post(f"{admin_url}/api/v1/users", headers=AUTH,
                         json={"jid": jid, "password": "pw"}) as resp:
        assert resp.status == 201
    return jid


async def _import(http: aiohttp.ClientSession, admin_url: str, body: Any) -> tuple[int, Any]:
    kw: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with http.post(f"{admin_url}/api/v1/rosters/import", headers=AUTH, **kw) as resp:
        return resp.status, await resp.json()


def _iqs(data: bytes) -> list[etree._Element]:
    """The <iq/> stanzas of a piece of the stream."""
    found = re.findall(rb"<iq\b[^>]*/>|<iq\b.*?</iq>", data, re.S)
    return [etree.fromstring(m) for m in found]


async def _result(raw: RawClient, id_: str) -> etree._Element:
    """The result IQ with id ``id_`` (what comes before it is dropped)."""
    data = await raw.read_until(f'id="{id_}"'.encode())
    if not re.search(f'id="{id_}"[^>]*/>|id="{id_}".*</iq>'.encode(), data, re.S):
        data += await raw.read_until(b"</iq>")
    (result,) = [iq for iq in _iqs(data) if iq.get("id") == id_]
    assert result.get("type") == "result"
    return result


async def _get_roster(raw: RawClient, ver: str | None = None) -> etree._Element:
    """§2.2: the roster the server answers (its <query/>)."""
    attr = f" ver='{ver}'" if ver is not None else ""
    await raw.send(f"<iq type='get' id='get1'><query xmlns='jabber:iq:roster'{attr}/></iq>"
                   .encode())
    result = await _result(raw, "get1")
    query = result.find(f"{ROSTER}query")
    assert query is not None
    return query


def _items(query: etree._Element) -> dict[str, etree._Element]:
    return {i.get("jid"): i for i in query.findall(f"{ROSTER}item")}


async def test_import_into_an_offline_account_is_there_at_login_and_replaces_on_rerun(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from services.cli.main import main

    for key, value in cluster.env("cli").items():
        if key.startswith("STANZAD_"):
            monkeypatch.setenv(key, value)
    owner = await _account(http, admin_url, cluster)
    path = tmp_path / "rosters.json"
    path.write_text(json.dumps({"rosters": [{"jid": owner.upper(), "items": [
        {"jid": "Bob@Example.ORG", "name": "Bob", "subscription": "both",
         "groups": ["Friends", "Work"]},
        {"jid": "carol@localhost", "subscription": "none", "ask": "subscribe",
         "approved": True},
        {"jid": "dave@localhost", "subscription": "to"},
    ]}]}))
    assert await asyncio.to_thread(main, ["roster", "import", str(path)]) == 0
    assert capsys.readouterr().out.strip() == (
        "imported 1 roster(s) with 3 item(s), 0 push(es) to online sessions; invalid 0 (of 1)")

    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(raw, owner, "pw")
        query = await _get_roster(raw, "")
        items = _items(query)
        assert set(items) == {"bob@example.org", "carol@localhost", "dave@localhost"}
        bob = items["bob@example.org"]
        assert (bob.get("name"), bob.get("subscription"), bob.get("ask")) == ("Bob", "both", None)
        assert [g.text for g in bob.findall(f"{ROSTER}group")] == ["Friends", "Work"]
        carol = items["carol@localhost"]
        assert (carol.get("subscription"), carol.get("ask"), carol.get("approved")) == (
            "none", "subscribe", "true")
        first_ver = int(query.get("ver") or 0)
        # §2.6: a small version cached from the old server (Prosody counts from 1) is older
        # than every imported item: nothing of the old roster is taken as current
        assert first_ver > 1 << 32
        await raw.send(b"<iq type='get' id='get1'><query xmlns='jabber:iq:roster' ver='2'/>"
                       b"</iq>")
        data = await raw.read_until(b"dave@localhost")
        pushed = {i.get("jid") for iq in _iqs(data) for i in iq.iter(f"{ROSTER}item")}
        assert pushed == set(items)
    finally:
        await raw.close()

    # run again with one item changed: replaced, the others left as they are (idempotent)
    path.write_text(json.dumps([{"jid": owner, "items": [
        {"jid": "dave@localhost", "subscription": "from", "name": "Dave"}]}]))
    assert await asyncio.to_thread(main, ["roster", "import", str(path)]) == 0
    capsys.readouterr()
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(raw, owner, "pw")
        query = await _get_roster(raw)
        items = _items(query)
        assert len(items) == 3
        assert (items["dave@localhost"].get("subscription"),
                items["dave@localhost"].get("name")) == ("from", "Dave")
        assert int(query.get("ver") or 0) == first_ver + 1
    finally:
        await raw.close()


async def test_import_into_an_online_account_pushes_each_item(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession
) -> None:
    """§2.1.6: one push per item, each with exactly one <item/> and its own version (§2.6),
    in order, to the resource that asked for the roster."""
    owner = await _account(http, admin_url, cluster)
    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:
        await raw_login(raw, owner, "pw", resource="phone")
        await _get_roster(raw)  # an interested resource
        status, body = await _import(http, admin_url, {"rosters": [{"jid": owner, "items": [
            {"jid": "erin@localhost", "name": "Erin", "subscription": "from"},
            {"jid": "frank@remote.example", "groups": ["Far"]},
        ]}]})
        assert status == 200, body
        assert body == {"imported": 1, "invalid": 0, "results": [
            {"jid": owner, "result": "imported", "items": 2, "pushed": 2}]}
        data = await raw.read_until(b"<group>Far</group></item></query></iq>")
        pushes = [iq for iq in _iqs(data) if iq.get("type") == "set"]
        assert len(pushes) == 2
        assert all(iq.get("to") == f"{owner}/phone" for iq in pushes)
        items = [iq.find(f"{ROSTER}query/{ROSTER}item") for iq in pushes]
        assert [i.get("jid") for i in items] == ["erin@localhost", "frank@remote.example"]
        assert (items[0].get("name"), items[0].get("subscription")) == ("Erin", "from")
        vers = [int(iq.find(f"{ROSTER}query").get("ver")) for iq in pushes]
        assert vers[1] == vers[0] + 1
        # the client acknowledges a push (§2.1.6); the server takes the result quietly
        for iq in pushes:
            await raw.send(f"<iq type='result' id='{iq.get('id')}'/>".encode())
        await raw.send(f"<iq type='get' id='get2'><query xmlns='jabber:iq:roster' "
                       f"ver='{vers[1]}'/></iq>".encode())
        result = await _result(raw, "get2")
        assert len(result) == 0  # up to date: an empty result (§2.6.3)
    finally:
        await raw.close()


async def test_bad_rosters_are_refused_with_a_reason_and_change_nothing(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    owner = await _account(http, admin_url, cluster)
    good = await _account(http, admin_url, cluster)
    entries: list[Any] = [
        {"jid": owner, "items": [{"jid": "ok@localhost"},
                                 {"jid": "x@localhost", "subscription": "both",
                                  "ask": "subscribe"}]},
        {"jid": owner, "items": [{"jid": "bad@@localhost"}]},
        {"jid": owner, "items": [{"jid": "a@localhost"}, {"jid": "A@localhost"}]},
        {"jid": owner, "items": [{"jid": "a@localhost", "groups": ["g", "g"]}]},
        {"jid": owner, "items": [{"jid": "a@localhost", "name": "n" * 1024}]},
        {"jid": owner, "items": [{"jid": "a@localhost", "subscription": "remove"}]},
        {"jid": owner, "items": [{"jid": "a@localhost", "colour": "red"}]},
        {"jid": owner, "items": [{"jid": "a@localhost/phone"}]},
        {"jid": owner, "items": [{"jid": f"{owner}"}]},
        {"jid": f"nobody{secrets.token_hex(3)}@{cluster.domain}", "items": []},
        {"jid": "x@elsewhere.example", "items": []},
        {"jid": owner, "items": [{"jid": "a@localhost"}] * 0 + ["text"]},
        {"jid": good, "items": [{"jid": "fine@localhost", "subscription": "to"}]},
        {"jid": good, "items": []},
        "just a string",
    ]
    status, body = await _import(http, admin_url, entries)
    assert status == 200
    assert (body["imported"], body["invalid"]) == (1, len(entries) - 1)
    results = body["results"]
    assert results[12] == {"jid": good, "result": "imported", "items": 1, "pushed": 0}
    reasons = [r.get("reason", "") for r in results]
    assert reasons[0].startswith("item 1 (x@localhost): subscription 'both' with ask")
    assert reasons[1].startswith("item 0 (bad@@localhost): not a JID")
    assert reasons[2] == "item 1 (a@localhost): listed twice (first as item 0)"
    assert reasons[3] == "item 0 (a@localhost): a group is listed twice"
    assert reasons[4] == "item 0 (a@localhost): 'name' is longer than 1023 bytes"
    assert "subscription 'remove' is not none, to, from or both" in reasons[5]
    assert "unknown field(s) colour" in reasons[6]
    assert "an item's JID is bare" in reasons[7]
    assert "the account itself" in reasons[8]
    assert "no such account (import the accounts first)" in reasons[9]
    assert "this cluster serves" in reasons[10] and "localhost" in reasons[10]  # and others added
    assert reasons[11] == "item 0 (no jid): not a JSON object"
    assert reasons[13] == "listed twice (first as entry 12)"
    assert reasons[14] == "not a JSON object"

    raw = RawClient("127.0.0.1", cluster.c2s_port)
    try:  # a roster with one bad item is refused whole: nothing of entry 0 was stored
        await raw_login(raw, owner, "pw")
        assert _items(await _get_roster(raw)) == {}
    finally:
        await raw.close()

    for bad in (b"{not json", b'{"accounts": []}', b'"a@localhost"'):
        status, body = await _import(http, admin_url, bad)
        assert status == 400 and isinstance(body["error"], str), bad
    status, body = await _import(http, admin_url, [{"jid": owner, "items": []}] * 1001)
    assert status == 413 and "at most 1000 rosters" in body["error"]

    from services.cli.main import main

    for key, value in cluster.env("cli").items():
        if key.startswith("STANZAD_"):
            monkeypatch.setenv(key, value)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"rosters": entries[:2]}))
    assert await asyncio.to_thread(main, ["roster", "import", str(path)]) == 1
    captured = capsys.readouterr()
    assert f"{owner}: invalid: item 1 (x@localhost): subscription 'both'" in captured.err
    assert captured.out.strip().endswith("invalid 2 (of 2)")
    path.write_text("[{")
    assert await asyncio.to_thread(main, ["roster", "import", str(path)]) == 1
    assert "is not JSON" in capsys.readouterr().err
