"""shared.store.domains: domain names and settings checked wherever they come from, the
domains file, and the ``domains`` table on a real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.store.accounts import AccountStore
from shared.store.domains import (
    DomainError,
    DomainExists,
    DomainStore,
    VirtualHost,
    load_file,
    prepare_domain,
)
from shared.store.pg.database import Database
from shared.xmpp.credentials import unusable_credentials

TOKEN = {"backend": "token", "key": {"kty": "oct", "k": "c2VjcmV0"}, "audience": "chat"}


def test_rfc7622_3_2_domain_names_are_canonical() -> None:
    assert prepare_domain(" Example.ORG. ") == "example.org"
    for bad in ("user@example.org", "example.org/res", "", "exa mple.org"):
        with pytest.raises(DomainError):
            prepare_domain(bad)


def test_settings_round_trip_and_defaults() -> None:
    host = VirtualHost.from_json("Chat.Example", {"allow_registration": True, "auth": TOKEN})
    assert host.name == "chat.example" and host.backend == "token"
    assert VirtualHost.from_json(host.name, host.settings_json()) == host
    plain = VirtualHost.from_json("a.example", None)
    assert plain.backend == "internal" and plain.settings_json() == {}


def test_registration_only_where_keys_are_stored() -> None:
    assert VirtualHost("a.example").registration(True)
    assert not VirtualHost("a.example", allow_registration=False).registration(True)
    assert not VirtualHost("a.example", True, TOKEN).registration(True)


@pytest.mark.parametrize(("settings", "why"), [
    ([], "must be an object"),
    ({"colour": "red"}, "unknown settings"),
    ({"allow_registration": "yes"}, "true or false"),
    ({"auth": {"backend": "ldap"}}, "one of"),
    ({"auth": {"backend": "internal", "url": "x"}}, "no options"),
    ({"auth": {"backend": "token", "audience": "chat"}}, "jwks_url or key"),
    ({"auth": {"backend": "token", "key": "k"}}, "audience"),  # RFC 7519 §4.1.3
    ({"auth": {**TOKEN, "algorithms": ["none"]}}, "algorithms"),  # RFC 7518 §3.6
    ({"auth": {**TOKEN, "url": "http://x"}}, "unknown token auth options"),
    ({"auth": {"backend": "http", "url": "ftp://x"}}, "http(s) url"),
    ({"auth": {"backend": "http", "url": "http://x", "timeout_s": -1}}, ">= 0"),
    ({"auth": {"backend": "http", "url": "http://x", "max_concurrent": 0}}, ">= 1"),
])
def test_bad_settings_are_refused_with_a_reason(settings: object, why: str) -> None:
    with pytest.raises(DomainError, match=why.replace("(", r"\(").replace(")", r"\)")):
        VirtualHost.from_json("a.example", settings)


def test_domains_file(tmp_path: Path) -> None:
    path = tmp_path / "domains.json"
    path.write_text(json.dumps({"domains": [
        {"name": "A.example", "allow_registration": False},
        {"name": "b.example", "auth": {"backend": "http", "url": "https://idp/auth"}},
    ]}))
    hosts = load_file(str(path))
    assert sorted(hosts) == ["a.example", "b.example"]
    assert hosts["b.example"].backend == "http" and hosts["a.example"].source == "config"
    path.write_text(json.dumps({"domains": [{"allow_registration": False}]}))
    with pytest.raises(DomainError, match="needs a name"):
        load_file(str(path))
    with pytest.raises(DomainError, match="domains file"):
        load_file(str(tmp_path / "missing.json"))


async def test_domain_store_add_update_remove_and_user_counts(db: Database) -> None:
    store = DomainStore(db)
    host = VirtualHost.from_json("c.example", {"auth": TOKEN})
    await store.add(host)
    with pytest.raises(DomainExists):
        await store.add(host)
    assert (await store.all())["c.example"] == VirtualHost(
        "c.example", None, TOKEN, "database")
    changed = VirtualHost("c.example", allow_registration=False)
    assert await store.update(changed)
    assert not await store.update(VirtualHost("nope.example"))
    assert (await store.all())["c.example"].allow_registration is False
    accounts = AccountStore(db, "tests")
    for user in ("a", "b"):
        await accounts.create(f"{user}@c.example", unusable_credentials())
    assert (await store.user_counts())["c.example"] == 2
    assert await store.remove("c.example")
    assert not await store.remove("c.example")
    assert "c.example" not in await store.all()


async def test_a_row_this_version_cannot_read_is_skipped(db: Database) -> None:
    await db.execute("t", "INSERT INTO domains (name, settings) VALUES ($1, $2::jsonb)",
                     "new.example", json.dumps({"from_the_future": 1}))
    await DomainStore(db).add(VirtualHost("ok.example"))
    assert set(await DomainStore(db).all()) == {"ok.example"}
