"""The platform's identity system, for logins on a domain with a delegated authentication
backend (docs/operations.md, "Connect the platform's identity"): `--auth token` and
`--auth http` runs against stanzad.

``token``: a domain whose backend checks JWTs with a static RS256 public key (RS256: what
identity providers sign with by default); each worker signs one token per user with the
private key before its login is timed, and logs in with SASL OAUTHBEARER (RFC 7628).
``http``: a domain whose backend asks `PasswordEndpoint`, an aiohttp server in the
coordinator process (MongooseIM's check_password contract), answering true for the run's
password; its CPU is the platform's, not counted as the server's.  Either domain is added
through the admin API with the backend's defaults (concurrency cap, timeouts, cache) as a
deployment would have them; its accounts are imported beforehand, as for the internal store,
so that a login does not create one.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from functools import cache
from typing import Any, Final

import aiohttp
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey, import_key

AUDIENCE: Final = "loadtest"
TOKEN_LIFETIME_S: Final = 3600
SERVED_TIMEOUT_S: Final = 30.0


def signing_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "loadtest"})


def token_auth(key: RSAKey) -> dict[str, Any]:
    """The token backend's settings: the static public key, the audience, RS256 only."""
    return {"backend": "token", "key": key.as_dict(private=False), "audience": AUDIENCE,
            "algorithms": ["RS256"]}


def http_auth(url: str) -> dict[str, Any]:
    return {"backend": "http", "url": url}


@cache
def _private(jwk_json: str) -> Any:
    return import_key(json.loads(jwk_json), "RSA")


def mint(jwk_json: str, jid: str) -> str:
    """A token for ``jid``'s localpart, signed with the private JWK ``jwk_json``."""
    now = int(time.time())
    claims = {"sub": jid.partition("@")[0], "aud": AUDIENCE, "iat": now,
              "exp": now + TOKEN_LIFETIME_S}
    return jwt.encode({"alg": "RS256", "kid": "loadtest"}, claims, _private(jwk_json))


class PasswordEndpoint:
    """``GET <url>/check_password?user=&server=&pass=`` answered ``true`` for ``password``,
    on its own thread and event loop, on a free loopback port."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.url = ""
        self.asked = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(ready,), daemon=True,
                                        name="loadtest-password-endpoint")
        self._thread.start()
        if not ready.wait(30) or not self.url:
            raise RuntimeError("the password endpoint did not start")

    def _main(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/auth/check_password", self._check)
        self._runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/auth"
        ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    async def _check(self, request: web.Request) -> web.Response:
        self.asked += 1
        return web.Response(text="true" if request.query.get("pass") == self.password
                            else "false")

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


async def add_domain(admin_url: str, token: str, domain: str, auth: dict[str, Any],
                     c2s_port: int) -> None:
    """Add ``domain`` with ``auth`` through the admin API and wait until the connection
    manager serves it (a stream header to it is not answered host-unknown)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (aiohttp.ClientSession(headers=headers,
                                      timeout=aiohttp.ClientTimeout(total=30)) as http,
                http.post(f"{admin_url}/api/v1/domains",
                          json={"name": domain, "settings": {"auth": auth}}) as resp):
        if resp.status != 201:
            raise RuntimeError(f"admin API: adding {domain}: {resp.status} "
                               f"{await resp.text()}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SERVED_TIMEOUT_S
    while not await _served(c2s_port, domain):
        if loop.time() > deadline:
            raise RuntimeError(f"{domain} not served {SERVED_TIMEOUT_S:.0f} s after adding it")
        await asyncio.sleep(0.5)


async def _served(port: int, domain: str) -> bool:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    try:
        writer.write(f"<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' "
                     "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
                     .encode())
        buf = b""
        while b"</stream:features>" not in buf and b"</stream:stream>" not in buf:
            chunk = await asyncio.wait_for(reader.read(4096), 10)
            if not chunk:
                break
            buf += chunk
        return b"</stream:features>" in buf
    finally:
        writer.close()
