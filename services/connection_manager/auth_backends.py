"""The authentication backends of domains whose users live in the platform's identity system.

A domain's ``auth`` setting (shared/store/domains.py) picks its backend; the stream machine
hands the secret over (`shared.xmpp.c2s.VerificationNeeded`) and `Backend.verify` answers
with the account's localpart, None (the secret does not authenticate) or raises
`BackendUnavailable` (the client gets ``temporary-auth-failure``, RFC 6120 §6.5.12):

``token``
    The secret is a JWT (RFC 7519) the platform issued, carried by SASL OAUTHBEARER
    (RFC 7628) or as the PLAIN password.  Its signature is checked with joserfc against a
    static key (``key``: a JWK, a JWK Set or a PEM public key) or the JWK Set at
    ``jwks_url`` (fetched, kept ``jwks_cache_s``, fetched again at most every
    `JWKS_MIN_REFETCH_S` when a token names a key id it does not hold); then ``exp`` (always
    required), ``aud`` (must contain ``audience``), ``iss`` (when ``issuer`` is set), with
    ``leeway_s`` of clock skew (RFC 7519 §4.1).  The account is the ``claim`` (default
    ``sub``): a localpart, or a bare JID of this domain.
``http``
    MongooseIM's HTTP authentication contract: ``GET <url>/check_password?user=<localpart>
    &server=<domain>&pass=<password>``, answered 200 with the body ``true`` or ``false``
    (404: no such user, also a no); anything else, a timeout (``timeout_s``) or a refused
    connection is "unavailable".  At most ``max_concurrent`` requests at a time per domain
    (the others wait, inside the timeout), and a success is remembered ``cache_s`` (keyed by
    an HMAC of the password, never the password).

Each backend counts its answers and their latency (stanzad_cm_auth_backend_*, by kind).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet, import_key

from shared.xmpp.sasl import prepare_username

from . import metrics

log = logging.getLogger(__name__)

JWKS_MIN_REFETCH_S: Final = 10.0  # an unknown key id fetches the JWK Set at most this often
CACHE_MAX: Final = 10_000  # remembered successes per HTTP domain
DEFAULT_ALGORITHMS: Final = ("RS256", "ES256")


class BackendUnavailable(Exception):
    """The backend could not answer (down, slow, misconfigured)."""


class Backend:
    kind = ""

    async def verify(self, username: str | None, secret: str, domain: str) -> str | None:
        """The localpart ``secret`` authenticates, None if it does not (``username``: the
        one the client named, if any); raises BackendUnavailable."""
        started = time.perf_counter()
        try:
            found = await self._verify(username, secret, domain)
        except BackendUnavailable:
            metrics.AUTH_BACKEND_RESULTS.labels(self.kind, "unavailable").inc()
            raise
        finally:
            metrics.AUTH_BACKEND_SECONDS.labels(self.kind).observe(
                time.perf_counter() - started)
        metrics.AUTH_BACKEND_RESULTS.labels(self.kind, "ok" if found else "rejected").inc()
        return found

    async def _verify(self, username: str | None, secret: str, domain: str) -> str | None:
        raise NotImplementedError

    @staticmethod
    def _localpart(value: object, domain: str) -> str | None:
        """A claim or answer naming the account: ``user`` or ``user@domain`` of this domain."""
        if not isinstance(value, str) or not value:
            return None
        local, at, host = value.rpartition("@")
        if at and host.rstrip(".").lower() != domain:
            return None
        try:
            return prepare_username(local if at else value)
        except ValueError:
            return None


class TokenBackend(Backend):
    kind = "token"

    def __init__(self, options: Mapping[str, Any], http: HttpClients) -> None:
        self._http = http
        self._jwks_url: str | None = options.get("jwks_url")
        self._jwks_cache_s = float(options.get("jwks_cache_s", 300))
        self._algorithms = list(options.get("algorithms", DEFAULT_ALGORITHMS))
        self._claim = str(options.get("claim", "sub"))
        self._registry = jwt.JWTClaimsRegistry(
            leeway=int(options.get("leeway_s", 30)),
            exp={"essential": True},
            aud={"essential": True, "value": options["audience"]},
            **({"iss": {"essential": True, "value": options["issuer"]}}
               if options.get("issuer") else {}),
        )
        self._keys: KeySet | None = _static_keys(options["key"]) if options.get("key") else None
        self._fetched = 0.0
        self._fetching: asyncio.Future[KeySet] | None = None

    async def _verify(self, username: str | None, secret: str, domain: str) -> str | None:
        keys = await self._key_set(refresh=False)
        try:
            try:
                token = jwt.decode(secret, keys, algorithms=self._algorithms)
            except InvalidKeyIdError:
                if self._jwks_url is None or time.monotonic() - self._fetched < JWKS_MIN_REFETCH_S:
                    raise
                token = jwt.decode(secret, await self._key_set(refresh=True),
                                   algorithms=self._algorithms)
            self._registry.validate(token.claims)
        except (JoseError, ValueError) as exc:  # forged, expired, for someone else...
            log.info("token refused: %s", type(exc).__name__)
            return None
        found = self._localpart(token.claims.get(self._claim), domain)
        if found is None or (username is not None and found != username):
            log.info("token refused: claim %r does not name %s", self._claim,
                     "this user" if username else "an account of the domain")
            return None
        return found

    async def _key_set(self, *, refresh: bool) -> KeySet:
        if self._jwks_url is None:
            assert self._keys is not None
            return self._keys
        fresh = time.monotonic() - self._fetched < self._jwks_cache_s
        if self._keys is not None and fresh and not refresh:
            return self._keys
        if self._fetching is None:  # one fetch at a time; the others wait for it
            self._fetching = asyncio.ensure_future(self._fetch())
        fetching = self._fetching
        try:
            self._keys = await asyncio.shield(fetching)
        except BackendUnavailable:
            if self._keys is None:
                raise
            log.warning("JWK Set not refreshed, keeping the known keys")
        finally:
            if self._fetching is fetching and fetching.done():
                self._fetching = None
        return self._keys

    async def _fetch(self) -> KeySet:
        assert self._jwks_url is not None
        try:
            async with self._http.session.get(
                self._jwks_url, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                if resp.status != 200:
                    raise BackendUnavailable(f"JWK Set: HTTP {resp.status}")
                doc = await resp.json(content_type=None)
            keys = KeySet.import_key_set(doc)
        except (aiohttp.ClientError, TimeoutError, ValueError, JoseError) as exc:
            log.warning("JWK Set %s not fetched: %s", self._jwks_url, exc)
            raise BackendUnavailable("JWK Set not fetched") from None
        finally:
            self._fetched = time.monotonic()
        return keys


def _static_keys(key: object) -> KeySet:
    """A static key setting: a JWK Set, a JWK, or a PEM public key."""
    if isinstance(key, str) and key.lstrip().startswith("{"):
        key = json.loads(key)
    if isinstance(key, dict) and "keys" in key:
        return KeySet.import_key_set(key)  # type: ignore[arg-type]
    if isinstance(key, dict):
        return KeySet([import_key(key, key.get("kty"))])  # type: ignore[arg-type]
    for kty in ("EC", "RSA", "OKP"):  # a PEM public key: its type, said explicitly
        try:
            return KeySet([import_key(str(key), kty)])  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError):
            continue
    raise ValueError("the static key is not a JWK, a JWK Set or a PEM public key")


class HttpBackend(Backend):
    kind = "http"

    def __init__(self, options: Mapping[str, Any], http: HttpClients) -> None:
        self._http = http
        self._url = str(options["url"]).rstrip("/") + "/check_password"
        self._timeout = float(options.get("timeout_s", 5))
        self._slots = asyncio.Semaphore(int(options.get("max_concurrent", 32)))
        self._cache_s = float(options.get("cache_s", 60))
        self._cache: dict[bytes, float] = {}  # HMAC(user, domain, password) -> expiry
        self._cache_key = secrets.token_bytes(32)
        basic = options.get("basic_auth")
        self._auth = aiohttp.BasicAuth(*str(basic).split(":", 1)) if basic else None

    async def _verify(self, username: str | None, secret: str, domain: str) -> str | None:
        if username is None:
            return None
        key = hmac.digest(self._cache_key, f"{username}\0{domain}\0{secret}".encode(),
                          hashlib.sha256)
        now = time.monotonic()
        if self._cache.get(key, 0.0) > now:
            return username
        try:
            async with asyncio.timeout(self._timeout):
                async with self._slots:  # the wait for a slot is inside the timeout
                    ok = await self._ask(username, secret, domain)
        except TimeoutError:
            log.warning("HTTP auth endpoint did not answer within %.1f s", self._timeout)
            raise BackendUnavailable("timeout") from None
        if not ok:
            return None
        if self._cache_s > 0:
            if len(self._cache) >= CACHE_MAX:
                self._cache = {k: t for k, t in self._cache.items() if t > now}
                if len(self._cache) >= CACHE_MAX:
                    self._cache.clear()
            self._cache[key] = now + self._cache_s
        return username

    async def _ask(self, username: str, password: str, domain: str) -> bool:
        params = {"user": username, "server": domain, "pass": password}
        try:
            async with self._http.session.get(self._url, params=params, auth=self._auth) as resp:
                body = (await resp.text()).strip().lower()
                status = resp.status
        except aiohttp.ClientError as exc:
            log.warning("HTTP auth endpoint unreachable: %s", type(exc).__name__)
            raise BackendUnavailable(type(exc).__name__) from None
        if status == 200 and body in ("true", "false"):
            return body == "true"
        if status == 404:  # MongooseIM's contract: the user does not exist
            return False
        log.warning("HTTP auth endpoint answered %d", status)
        raise BackendUnavailable(f"HTTP {status}")


class HttpClients:
    """The one aiohttp session the backends of a connection manager share."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=60))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class Backends:
    """The backend of each domain, made when first needed and again when its settings
    change (a `VirtualHost` is immutable: a new object is a change)."""

    def __init__(self) -> None:
        self.http = HttpClients()
        self._made: dict[str, tuple[object, Backend]] = {}

    def for_host(self, name: str, host: object, auth: Mapping[str, Any]) -> Backend:
        known = self._made.get(name)
        if known is not None and known[0] is host:
            return known[1]
        kind = auth.get("backend")
        try:
            backend: Backend = (TokenBackend(auth, self.http) if kind == "token"
                                else HttpBackend(auth, self.http))
        except (JoseError, ValueError, TypeError, KeyError) as exc:  # e.g. an unusable key
            log.error("the %s backend of %s cannot be used: %s", kind, name, exc)
            raise BackendUnavailable("misconfigured") from None
        self._made[name] = (host, backend)
        return backend

    def forget(self, present: set[str]) -> None:
        """Drop the backends of domains no longer served."""
        for name in self._made.keys() - present:
            del self._made[name]

    async def close(self) -> None:
        await self.http.close()
