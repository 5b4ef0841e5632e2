"""Domains whose users the platform's identity system authenticates (issue 23): a ``token``
domain takes SASL OAUTHBEARER (RFC 7628) with JWTs signed here by a key its JWK Set (served
by an aiohttp server of the test) names, an ``http`` domain asks that server's
check_password endpoint (MongooseIM's contract), and SCRAM is offered on neither."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey

from tests.conftest import ADMIN_TOKEN, Users
from tests.support.cluster import Cluster
from tests.support.xmpp import RawClient, eventually

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
ISSUER = "https://idp.platform.test"
AUDIENCE = "chat"


@dataclass
class Platform:
    """The platform's identity system: a JWK Set, signed tokens, a password endpoint."""

    key: ECKey = field(default_factory=lambda: ECKey.generate_key(
        "P-256", parameters={"kid": "platform-1"}))
    passwords: dict[tuple[str, str], str] = field(default_factory=dict)
    asked: int = 0
    runner: web.AppRunner | None = None
    url: str = ""

    def token(self, sub: str, *, aud: str = AUDIENCE, exp_in: int = 300,
              key: ECKey | None = None) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": aud, "sub": sub, "iat": now, "exp": now + exp_in}
        return jwt.encode({"alg": "ES256", "kid": "platform-1"}, claims, key or self.key)

    async def jwks(self, _request: web.Request) -> web.Response:
        return web.json_response({"keys": [self.key.as_dict(private=False)]})

    async def check_password(self, request: web.Request) -> web.Response:
        self.asked += 1
        q = request.query
        known = self.passwords.get((q.get("user", ""), q.get("server", "")))
        if known is None:
            return web.Response(status=404, text="false")
        return web.Response(text="true" if q.get("pass") == known else "false")

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    p = Platform()
    app = web.Application()
    app.router.add_get("/jwks.json", p.jwks)
    app.router.add_get("/auth/check_password", p.check_password)
    p.runner = web.AppRunner(app)
    await p.runner.setup()
    site = web.TCPSite(p.runner, "127.0.0.1", 0)
    await site.start()
    port = p.runner.addresses[0][1]
    p.url = f"http://127.0.0.1:{port}"
    yield p
    await p.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def _add_domain(http: aiohttp.ClientSession, admin_url: str, cluster: Cluster,
                      auth: dict[str, Any], **settings: Any) -> str:
    domain = f"idp{secrets.token_hex(3)}.example"
    async with http.post(f"{admin_url}/api/v1/domains", headers=AUTH,
                         json={"name": domain, "settings": {"auth": auth, **settings}}) as resp:
        assert resp.status == 201, await resp.text()

    async def served() -> bool:
        raw = RawClient("127.0.0.1", cluster.c2s_port, domain)
        try:
            await raw.open()
            await raw.send(raw.header())
            return b"host-unknown" not in await raw.read_until_any(
                (b"</stream:features>", b"</stream:stream>"))
        finally:
            await raw.close()

    await eventually(served, timeout=15, what=f"{domain} served")
    return domain


async def _remove_domain(http: aiohttp.ClientSession, admin_url: str, domain: str) -> None:
    async with http.delete(f"{admin_url}/api/v1/domains/{domain}", headers=AUTH) as resp:
        assert resp.status == 200


async def _sasl(cluster: Cluster, domain: str, mechanism: str, data: bytes,
                bind: bool = True, resource: str = "r") -> tuple[RawClient, bytes, bytes]:
    """STARTTLS, <auth/> with ``data``, RFC 7628 §3.2.2's dummy response to an error
    challenge; (the client, the mechanisms offered, the SASL outcome [+ bind result])."""
    raw = RawClient("127.0.0.1", cluster.c2s_port, domain)
    await raw.open()
    await raw.starttls()
    await raw.send(raw.header())
    features = await raw.read_until(b"</stream:features>")
    offered = b" ".join(re.findall(rb"<mechanism>([^<]+)</mechanism>", features))
    b64 = base64.b64encode(data).decode()
    await raw.send(f"<auth xmlns='{SASL}' mechanism='{mechanism}'>{b64}</auth>".encode())
    outcome = await raw.read_until_any((b"</success>", b"<success/>", b"</failure>",
                                        b"</challenge>"), timeout=20)
    if b"</challenge>" in outcome:
        await raw.send(f"<response xmlns='{SASL}'>AQ==</response>".encode())
        outcome += await raw.read_until(b"</failure>", timeout=20)
    if bind and b"<success" in outcome:
        await raw.send(raw.header())
        await raw.read_until(b"</stream:features>")
        await raw.send(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                       + f"<resource>{resource}</resource></bind></iq>".encode())
        outcome += await raw.read_until(b"</iq>")
    return raw, offered, outcome


def _bearer(token: str) -> bytes:
    return f"n,,\x01auth=Bearer {token}\x01\x01".encode()  # RFC 7628 §3.1


def _plain(user: str, password: str) -> bytes:
    return f"\0{user}\0{password}".encode()


async def test_rfc7628_token_domain_valid_jwt_logs_in_and_bad_ones_are_not_authorized(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession, platform: Platform,
    users: Users,
) -> None:
    domain = await _add_domain(http, admin_url, cluster, {
        "backend": "token", "jwks_url": f"{platform.url}/jwks.json", "issuer": ISSUER,
        "audience": AUDIENCE, "algorithms": ["ES256"], "create_accounts": True,
        "leeway_s": 0})
    try:
        user = f"ann{secrets.token_hex(2)}"
        raw, offered, outcome = await _sasl(cluster, domain, "OAUTHBEARER",
                                            _bearer(platform.token(user)))
        try:
            assert offered == b"OAUTHBEARER PLAIN"  # no SCRAM: no keys stored here
            assert b"<success" in outcome, outcome
            assert f"<jid>{user}@{domain}/r</jid>".encode() in outcome, outcome
        finally:
            await raw.close()
        # the first login made the account (create_accounts)
        assert await users.accounts.exists(f"{user}@{domain}")
        # the token as the PLAIN password does too (for clients without OAUTHBEARER)
        raw, _, outcome = await _sasl(cluster, domain, "PLAIN",
                                      _plain(user, platform.token(user)))
        await raw.close()
        assert b"<success" in outcome, outcome
        # ... but only for the user it names
        raw, _, outcome = await _sasl(cluster, domain, "PLAIN",
                                      _plain("someone-else", platform.token(user)))
        await raw.close()
        assert b"<not-authorized/>" in outcome, outcome

        forger = ECKey.generate_key("P-256", parameters={"kid": "platform-1"})
        bad = {
            "expired": platform.token(user, exp_in=-60),
            "forged": platform.token(user, key=forger),
            "wrong audience": platform.token(user, aud="billing"),
            "garbage": "not.a.jwt",
        }
        for why, token in bad.items():
            raw, _, outcome = await _sasl(cluster, domain, "OAUTHBEARER", _bearer(token))
            await raw.close()
            assert b"<challenge" in outcome, (why, outcome)  # RFC 7628 §3.2.2 error first
            assert b"<not-authorized/>" in outcome, (why, outcome)
            assert b"<success" not in outcome, why
    finally:
        await _remove_domain(http, admin_url, domain)


async def test_http_domain_logs_in_through_the_endpoint_and_is_temporary_auth_failure_when_down(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession, platform: Platform,
    users: Users,
) -> None:
    domain = await _add_domain(http, admin_url, cluster, {
        "backend": "http", "url": f"{platform.url}/auth", "timeout_s": 3,
        "max_concurrent": 4, "cache_s": 60, "create_accounts": True})
    user = f"bob{secrets.token_hex(2)}"
    platform.passwords[(user, domain)] = "platform-pw"
    removed = False
    try:
        raw, offered, outcome = await _sasl(cluster, domain, "PLAIN", _plain(user, "platform-pw"))
        await raw.close()
        assert offered == b"PLAIN"
        assert b"<success" in outcome and b"<jid>" in outcome, outcome
        assert platform.asked == 1
        assert await users.accounts.exists(f"{user}@{domain}")

        raw, _, outcome = await _sasl(cluster, domain, "PLAIN", _plain(user, "wrong"))
        await raw.close()
        assert b"<not-authorized/>" in outcome, outcome
        raw, _, outcome = await _sasl(cluster, domain, "PLAIN", _plain("nobody", "x"))
        await raw.close()
        assert b"<not-authorized/>" in outcome, outcome

        # a session stays open while the endpoint goes away
        session, _, outcome = await _sasl(cluster, domain, "PLAIN", _plain(user, "platform-pw"),
                                          resource="kept")
        assert b"<jid>" in outcome
        asked = platform.asked
        await platform.stop()
        # the success just seen is remembered (cache_s): no question asked
        raw, _, outcome = await _sasl(cluster, domain, "PLAIN", _plain(user, "platform-pw"))
        await raw.close()
        assert b"<success" in outcome, outcome
        assert platform.asked == asked
        # anything else needs the endpoint: RFC 6120 §6.5.12
        raw, _, outcome = await _sasl(cluster, domain, "PLAIN", _plain(user, "other-pw"))
        await raw.close()
        assert b"<temporary-auth-failure/>" in outcome, outcome

        # the domain removed: its open session ends with host-gone (RFC 6120 §4.9.3.5)
        await _remove_domain(http, admin_url, domain)
        removed = True
        await session.expect_stream_error("host-gone", timeout=15)
        await session.close()
    finally:
        if not removed:
            await _remove_domain(http, admin_url, domain)


async def _iq(raw: RawClient, iq: str) -> bytes:
    await raw.send(iq.encode())
    return await raw.read_until(b"</iq>", timeout=15)


async def test_xep0077_no_registration_password_change_or_removal_on_a_token_domain(
    cluster: Cluster, admin_url: str, http: aiohttp.ClientSession, platform: Platform,
    users: Users, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The accounts of a delegated domain are the platform's: registration is neither
    offered nor accepted (XEP-0077 §3.1 service-unavailable, even with allow_registration),
    a logged-in user's password change and removal are <not-allowed/> (§3.3, §3.2) and the
    server's disco#info does not list jabber:iq:register to them; the admin API and the CLI
    refuse to set a password there, saying why."""
    from services.cli.main import main

    domain = await _add_domain(http, admin_url, cluster, {
        "backend": "token", "jwks_url": f"{platform.url}/jwks.json", "issuer": ISSUER,
        "audience": AUDIENCE, "algorithms": ["ES256"], "create_accounts": True},
        allow_registration=True)
    try:
        user = f"eve{secrets.token_hex(2)}"
        raw = RawClient("127.0.0.1", cluster.c2s_port, domain)
        try:
            await raw.open()
            await raw.starttls()
            await raw.send(raw.header())
            features = await raw.read_until(b"</stream:features>")
            assert b"OAUTHBEARER" in features and b"iq-register" not in features, features
            reply = await _iq(raw, "<iq type='set' id='reg'><query xmlns='jabber:iq:register'>"
                              f"<username>{user}</username><password>pw</password></query></iq>")
            assert b"<service-unavailable" in reply and b'type="cancel"' in reply, reply
        finally:
            await raw.close()
        assert not await users.accounts.exists(f"{user}@{domain}")

        raw, _, outcome = await _sasl(cluster, domain, "OAUTHBEARER",
                                      _bearer(platform.token(user)))
        try:
            assert b"<jid>" in outcome, outcome
            info = await _iq(raw, f"<iq type='get' id='d1' to='{domain}'><query "
                             "xmlns='http://jabber.org/protocol/disco#info'/></iq>")
            assert b"urn:xmpp:ping" in info and b"jabber:iq:register" not in info, info
            for what, child in (
                ("form", "<query xmlns='jabber:iq:register'/>"),
                ("password", f"<query xmlns='jabber:iq:register'><username>{user}</username>"
                             "<password>new-pw</password></query>"),
                ("remove", "<query xmlns='jabber:iq:register'><remove/></query>"),
            ):
                type_ = "get" if what == "form" else "set"
                reply = await _iq(raw, f"<iq type='{type_}' id='{what}'>{child}</iq>")
                assert b"<not-allowed" in reply and b'type="cancel"' in reply, (what, reply)
                assert b"identity provider" in reply, reply
        finally:
            await raw.close()
        assert await users.accounts.exists(f"{user}@{domain}")  # not removed

        url = f"{admin_url}/api/v1/users/{user}@{domain}/password"
        async with http.put(url, headers=AUTH, json={"password": "admin-pw"}) as resp:
            assert resp.status == 400
            assert "token authentication backend" in (await resp.json())["error"]
        for key, value in cluster.env("cli").items():
            if key.startswith("STANZAD_"):
                monkeypatch.setenv(key, value)
        assert await asyncio.to_thread(
            main, ["user", "passwd", f"{user}@{domain}", "--password", "cli-pw"]) == 1
        err = capsys.readouterr().err
        assert "token authentication backend" in err and "change the password there" in err
        # the main domain keeps its stored keys: its passwords are set as before
        jid, _ = await users.create("kept")
        assert await asyncio.to_thread(
            main, ["user", "passwd", jid, "--password", "cli-pw"]) == 0
    finally:
        await _remove_domain(http, admin_url, domain)
