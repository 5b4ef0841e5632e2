"""Virtual hosts on one cluster: a domain added through the admin API serves logins within
seconds, its users and the main domain's chat without s2s, and a removed one refuses new
streams with host-unknown (RFC 6120 §4.9.3.6)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import ADMIN_TOKEN, Users
from tests.support.cluster import Cluster
from tests.support.xmpp import Client, RawClient, eventually, raw_login

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def _call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url, headers=AUTH, **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body


async def _header_answer(cluster: Cluster, domain: str) -> bytes:
    raw = RawClient("127.0.0.1", cluster.c2s_port, domain)
    try:
        await raw.open()
        await raw.send(raw.header())
        return await raw.read_until_any((b"</stream:features>", b"</stream:stream>"))
    finally:
        await raw.close()


async def _logs_in(cluster: Cluster, jid: str, password: str) -> bool:
    raw = RawClient("127.0.0.1", cluster.c2s_port, jid.partition("@")[2])
    try:
        return b"<jid>" in await raw_login(raw, jid, password)
    except (PermissionError, ConnectionError, TimeoutError, AssertionError):
        return False
    finally:
        await raw.close()


async def test_a_domain_added_at_run_time_serves_logins_and_chats_with_the_main_domain(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession, users: Users
) -> None:
    other = f"vh{secrets.token_hex(3)}.example"
    # not served yet: RFC 6120 §4.9.3.6
    assert b"host-unknown" in await _header_answer(cluster, other)
    status, body = await _call(http, "POST", f"{admin_url}/api/v1/domains",
                               json={"name": other, "settings": {"allow_registration": False}})
    assert status == 201, body
    status, _ = await _call(http, "POST", f"{admin_url}/api/v1/domains", json={"name": other})
    assert status == 409
    bob = f"bob@{other}"
    status, body = await _call(http, "POST", f"{admin_url}/api/v1/users",
                               json={"jid": bob, "password": "bob-pw"})
    assert status == 201, body
    try:
        await eventually(lambda: _logs_in(cluster, bob, "bob-pw"), timeout=10,
                         what=f"a login on {other}")
        # a user of the main domain and one of the new domain talk, both ways
        alice, alice_pw = await users.create("alice")
        a = Client(f"{alice}/desk", alice_pw)
        b = Client(f"{bob}/desk", "bob-pw")
        await a.login("127.0.0.1", cluster.c2s_port)
        await b.login("127.0.0.1", cluster.c2s_port)
        try:
            a.send_message(mto=f"{bob}/desk", mbody="hello other domain", mtype="chat")
            got = await asyncio.wait_for(b.messages.get(), 10)
            assert got["body"] == "hello other domain"
            assert got["from"].bare == alice
            b.send_message(mto=alice, mbody="hello main domain", mtype="chat")
            got = await asyncio.wait_for(a.messages.get(), 10)
            assert got["body"] == "hello main domain"
            assert got["from"].bare == bob
        finally:
            await a.logout()
            await b.logout()

        status, body = await _call(http, "GET", f"{admin_url}/api/v1/domains")
        assert status == 200
        listed = {d["name"]: d for d in body["domains"]}
        assert listed[other]["users"] == 1 and listed[other]["source"] == "database"
        assert listed[cluster.domain]["source"] == "config"
    finally:
        status, _ = await _call(http, "DELETE", f"{admin_url}/api/v1/domains/{other}")
        assert status == 200
    # removed: new streams to it are refused
    async def refused() -> bool:
        return b"host-unknown" in await _header_answer(cluster, other)

    await eventually(refused, timeout=10, what=f"{other} refused")
    assert not await _logs_in(cluster, bob, "bob-pw")
    status, _ = await _call(http, "DELETE", f"{admin_url}/api/v1/domains/{other}")
    assert status == 404


async def test_the_main_domain_cannot_be_removed_or_added_through_the_api(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession
) -> None:
    status, body = await _call(http, "DELETE", f"{admin_url}/api/v1/domains/{cluster.domain}")
    assert status == 400 and "configured" in body["error"]
    status, _ = await _call(http, "POST", f"{admin_url}/api/v1/domains",
                            json={"name": cluster.domain})
    assert status == 409
    status, body = await _call(http, "POST", f"{admin_url}/api/v1/domains",
                               json={"name": "x.example", "settings": {"auth": {
                                   "backend": "token"}}})
    assert status == 400 and "jwks_url or key" in body["error"]
