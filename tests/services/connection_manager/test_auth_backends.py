"""The token and HTTP authentication backends alone: a static key, the claims checked
(RFC 7519 §4.1), and an HTTP endpoint (an aiohttp server of the test) that is slow,
busy or wrong."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey

from services.connection_manager.auth_backends import (
    BackendUnavailable,
    HttpBackend,
    HttpClients,
    TokenBackend,
)

KEY = ECKey.generate_key("P-256")
PEM = KEY.as_pem(private=False).decode()


def _token(**claims: object) -> str:
    now = int(time.time())
    base: dict[str, object] = {"iss": "idp", "aud": "chat", "sub": "ann", "exp": now + 60}
    base.update(claims)
    return jwt.encode({"alg": "ES256"}, {k: v for k, v in base.items() if v is not None}, KEY)


@pytest.fixture
async def clients() -> AsyncIterator[HttpClients]:
    c = HttpClients()
    yield c
    await c.close()


async def test_static_pem_key_and_the_rfc7519_4_1_claims(clients: HttpClients) -> None:
    backend = TokenBackend({"backend": "token", "key": PEM, "issuer": "idp",
                            "audience": "chat", "algorithms": ["ES256"], "leeway_s": 0},
                           clients)
    assert await backend.verify(None, _token(), "x.example") == "ann"
    assert await backend.verify(None, _token(sub="Ann@X.example"), "x.example") == "ann"
    assert await backend.verify("ann", _token(), "x.example") == "ann"
    refused = {
        "another user": ("bob", _token()),
        "another domain": (None, _token(sub="ann@y.example")),
        "issuer": (None, _token(iss="other")),
        "audience": (None, _token(aud=["billing"])),
        "expired": (None, _token(exp=int(time.time()) - 10)),
        "no exp": (None, _token(exp=None)),
        "no claim": (None, _token(sub=None)),
    }
    for why, (user, token) in refused.items():
        assert await backend.verify(user, token, "x.example") is None, why


async def test_only_the_configured_algorithms(clients: HttpClients) -> None:
    backend = TokenBackend({"backend": "token", "key": PEM, "audience": "chat",
                            "algorithms": ["RS256"]}, clients)
    assert await backend.verify(None, _token(), "x.example") is None


async def _endpoint(handler: object) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/check_password", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_http_concurrency_is_bounded_and_a_slow_endpoint_is_unavailable(
    clients: HttpClients,
) -> None:
    in_flight = peak = 0
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await release.wait()
        finally:
            in_flight -= 1
        return web.Response(text="true")

    runner, url = await _endpoint(handler)
    try:
        backend = HttpBackend({"backend": "http", "url": url, "max_concurrent": 2,
                               "timeout_s": 30, "cache_s": 0}, clients)
        tasks = [asyncio.create_task(backend.verify(f"u{i}", "pw", "x.example"))
                 for i in range(5)]
        for _ in range(200):  # bounded wait until the first two arrived
            if peak >= 2:
                break
            await asyncio.sleep(0.02)
        release.set()
        assert await asyncio.wait_for(asyncio.gather(*tasks), 30) == [
            f"u{i}" for i in range(5)]
        assert peak == 2
        release.clear()
        slow = HttpBackend({"backend": "http", "url": url, "timeout_s": 0.3}, clients)
        with pytest.raises(BackendUnavailable):
            await slow.verify("ann", "pw", "x.example")
        release.set()
    finally:
        await runner.cleanup()


async def test_http_answers_other_than_the_contract_are_unavailable(
    clients: HttpClients,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        user = request.query["user"]
        if user == "missing":
            return web.Response(status=404)
        if user == "broken":
            return web.Response(status=500, text="oops")
        return web.Response(text="maybe")

    runner, url = await _endpoint(handler)
    try:
        backend = HttpBackend({"backend": "http", "url": url}, clients)
        assert await backend.verify("missing", "pw", "x.example") is None
        for user in ("broken", "odd"):
            with pytest.raises(BackendUnavailable):
                await backend.verify(user, "pw", "x.example")
        assert await backend.verify(None, "pw", "x.example") is None  # PLAIN names a user
    finally:
        await runner.cleanup()
