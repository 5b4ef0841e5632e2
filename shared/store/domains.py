"""Virtual hosts: the account domains one cluster serves, each with its own settings.

The main domain (``STANZAD_DOMAIN``) and the domains of a domains file
(``STANZAD_DOMAINS_FILE``) are configuration; the domains added at run time (admin API,
``stanzad domain add``) are rows of the ``domains`` table.  A domain's settings say whether
in-band registration is open there and which authentication backend logs its users in
(``internal``: the SCRAM keys this server stores; ``token``: SASL OAUTHBEARER with a JWT,
RFC 7628; ``http``: an HTTP endpoint asked about each user/password), with that backend's
options.  Settings are JSON objects, checked here (`VirtualHost.from_json`) wherever they
come from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from shared.store.pg.database import Database
from shared.xmpp.jid import JID, JIDError

BACKENDS: Final = ("internal", "token", "http")
_TOP_KEYS: Final = frozenset({"allow_registration", "auth"})
_TOKEN_KEYS: Final = frozenset({
    "backend", "jwks_url", "key", "algorithms", "issuer", "audience", "claim",
    "create_accounts", "leeway_s", "jwks_cache_s",
})
_HTTP_KEYS: Final = frozenset({
    "backend", "url", "timeout_s", "max_concurrent", "cache_s", "create_accounts",
    "basic_auth",
})


class DomainError(ValueError):
    """A domain name or its settings are not acceptable; the message says why."""


class DomainExists(DomainError):
    """The domain is already served."""


def prepare_domain(name: str) -> str:
    """The canonical form of a domain name (RFC 7622 §3.2), or DomainError."""
    try:
        jid = JID.parse(name.strip().rstrip("."))
    except JIDError as exc:
        raise DomainError(f"not a domain name: {name!r} ({exc})") from None
    if jid.local is not None or jid.resource is not None:
        raise DomainError(f"not a domain name: {name!r}")
    return jid.domain


@dataclass(frozen=True, slots=True)
class VirtualHost:
    """One account domain and its settings."""

    name: str
    allow_registration: bool | None = None  # None: the cluster's STANZAD_ALLOW_REGISTRATION
    auth: Mapping[str, Any] = field(default_factory=dict)  # {"backend": ..., options}
    source: str = "config"  # "config" (main domain, domains file) or "database"

    @property
    def backend(self) -> str:
        return str(self.auth.get("backend", "internal"))

    def registration(self, default: bool) -> bool:
        """In-band registration (XEP-0077) on this domain: only where keys are stored."""
        allowed = default if self.allow_registration is None else self.allow_registration
        return allowed and self.backend == "internal"

    def settings_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.allow_registration is not None:
            out["allow_registration"] = self.allow_registration
        if self.auth:
            out["auth"] = dict(self.auth)
        return out

    @classmethod
    def from_json(cls, name: str, doc: object, source: str = "config") -> VirtualHost:
        """A domain from its settings object; DomainError names what is wrong."""
        name = prepare_domain(name)
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise DomainError(f"{name}: settings must be an object")
        unknown = set(doc) - _TOP_KEYS - {"name"}
        if unknown:
            raise DomainError(f"{name}: unknown settings {sorted(unknown)}")
        reg = doc.get("allow_registration")
        if reg is not None and not isinstance(reg, bool):
            raise DomainError(f"{name}: allow_registration must be true or false")
        auth = doc.get("auth") or {}
        if not isinstance(auth, dict):
            raise DomainError(f"{name}: auth must be an object")
        _check_auth(name, auth)
        return cls(name, reg, dict(auth), source)


def _check_auth(name: str, auth: dict[str, Any]) -> None:
    backend = auth.get("backend", "internal")
    if backend not in BACKENDS:
        raise DomainError(f"{name}: auth backend must be one of {', '.join(BACKENDS)}")
    if backend == "internal":
        if set(auth) - {"backend"}:
            raise DomainError(f"{name}: the internal backend takes no options")
        return
    allowed = _TOKEN_KEYS if backend == "token" else _HTTP_KEYS
    unknown = set(auth) - allowed
    if unknown:
        raise DomainError(f"{name}: unknown {backend} auth options {sorted(unknown)}")
    if backend == "token":
        if not auth.get("jwks_url") and not auth.get("key"):
            raise DomainError(f"{name}: the token backend needs jwks_url or key")
        if not auth.get("audience"):  # RFC 7519 §4.1.3: a token for someone else is refused
            raise DomainError(f"{name}: the token backend needs an audience")
        algs = auth.get("algorithms", ["RS256", "ES256"])
        if (not isinstance(algs, list) or not algs or "none" in algs
                or not all(isinstance(a, str) for a in algs)):
            raise DomainError(f"{name}: algorithms must be a list of JWS algorithm names")
    else:
        url = auth.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise DomainError(f"{name}: the http backend needs an http(s) url")
    for key in ("timeout_s", "cache_s", "leeway_s", "jwks_cache_s"):
        if key in auth and (not isinstance(auth[key], int | float) or auth[key] < 0):
            raise DomainError(f"{name}: {key} must be a number >= 0")
    if "max_concurrent" in auth and (not isinstance(auth["max_concurrent"], int)
                                     or auth["max_concurrent"] < 1):
        raise DomainError(f"{name}: max_concurrent must be an integer >= 1")


def load_file(path: str) -> dict[str, VirtualHost]:
    """The domains of a domains file: ``{"domains": [{"name": ..., settings...}, ...]}``."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DomainError(f"domains file {path}: {exc}") from None
    entries = doc.get("domains") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise DomainError(f"domains file {path}: expected {{\"domains\": [...]}}")
    hosts: dict[str, VirtualHost] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise DomainError(f"domains file {path}: every entry needs a name")
        settings = {k: v for k, v in entry.items() if k != "name"}
        host = VirtualHost.from_json(entry["name"], settings)
        hosts[host.name] = host
    return hosts


class DomainStore:
    """The domains added at run time, in PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def all(self) -> dict[str, VirtualHost]:
        rows = await self._db.fetch("domain_list",
                                    "SELECT name, settings FROM domains ORDER BY name")
        hosts = {}
        for r in rows:
            raw = r["settings"]
            doc = json.loads(raw) if isinstance(raw, str | bytes) else raw
            try:
                hosts[r["name"]] = VirtualHost.from_json(r["name"], doc, "database")
            except DomainError:  # a row written by a newer version: skipped, not fatal
                continue
        return hosts

    async def add(self, host: VirtualHost) -> None:
        status = await self._db.execute(
            "domain_add",
            "INSERT INTO domains (name, settings) VALUES ($1, $2::jsonb) "
            "ON CONFLICT (name) DO NOTHING",
            host.name, json.dumps(host.settings_json()))
        if status != "INSERT 0 1":
            raise DomainExists(f"{host.name} is already served")

    async def update(self, host: VirtualHost) -> bool:
        status = await self._db.execute(
            "domain_update",
            "UPDATE domains SET settings = $2::jsonb, updated_at = now() WHERE name = $1",
            host.name, json.dumps(host.settings_json()))
        return status == "UPDATE 1"

    async def remove(self, name: str) -> bool:
        status = await self._db.execute("domain_remove", "DELETE FROM domains WHERE name = $1",
                                        name)
        return status == "DELETE 1"

    async def user_counts(self) -> dict[str, int]:
        rows = await self._db.fetch(
            "domain_users", "SELECT domain, count(*) AS n FROM accounts GROUP BY domain")
        return {r["domain"]: int(r["n"]) for r in rows}
