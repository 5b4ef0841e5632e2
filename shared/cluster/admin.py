"""Operations on a running cluster, shared by the admin API (services/admin) and `stanzad`.

Accounts and the session table are read and written through shared/store; a bulk import
(`ClusterAdmin.import_accounts`) takes passwords or ready SCRAM keys (RFC 5802 §3), checks
every entry and reports on each; so does a roster import (`ClusterAdmin.import_rosters`),
which also pushes the imported items to the account's online resources; kicking a session
publishes a KICK envelope to the connection manager that holds it, which closes the stream
with the condition named in the payload.  The cluster view (routers, partition leases,
connection managers and their heartbeat) only reads Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import redis.asyncio as aioredis

from shared.bus import subjects
from shared.bus.client import Bus
from shared.bus.envelope import Envelope, Kind, accounts_event, session_event
from shared.cluster.vhosts import announce
from shared.store import keys
from shared.store.accounts import AccountStore
from shared.store.domains import (
    DomainError,
    DomainExists,
    DomainStore,
    VirtualHost,
    load_file,
    prepare_domain,
)
from shared.store.fast_tokens import FastTokenStore
from shared.store.pg.database import Database
from shared.store.roster import RosterItem, RosterStore, push_iq
from shared.store.sessions import SessionRecord, SessionStore, split_full
from shared.xmpp.credentials import (
    MIN_ITERATIONS,
    StoredCredentials,
    derive_credentials,
    from_json,
    prepare_password,
)
from shared.xmpp.jid import JID, JIDError
from shared.xmpp.subscription import State, Subscription

log = logging.getLogger(__name__)

KICK_CONDITION: Final = "policy-violation"  # RFC 6120 §4.9.3.14
IMPORT_FIELDS: Final = frozenset({"jid", "password", "scram"})
EVENT_JIDS: Final = 500  # bare JIDs per bulk session event (well under NATS's max_payload)

Outcome = Literal["created", "exists", "invalid"]

ROSTER_FIELDS: Final = frozenset({"jid", "items"})
ROSTER_ITEM_FIELDS: Final = frozenset({"jid", "name", "subscription", "ask", "groups",
                                       "approved"})
# the roster service's defaults (RosterSettings): an import gives no more than a client may
MAX_ROSTER_ITEMS: Final = 5000
MAX_ROSTER_TEXT_BYTES: Final = 1023
MAX_GROUPS: Final = 100  # per item


class AdminError(ValueError):
    """A request the cluster cannot carry out as asked (bad JID, wrong domain, ...)."""


@dataclass(frozen=True, slots=True)
class SessionInfo:
    jid: str
    cm_id: str
    session_id: str
    priority: int
    available: bool
    cm_alive: bool
    address: str = ""  # the client's "ip:port" (behind a PROXY protocol header: the client's)


@dataclass(frozen=True, slots=True)
class ConnectionManagerInfo:
    id: str
    alive: bool
    heartbeat_ttl_s: float  # left on the heartbeat key; 0 when expired
    sessions: int
    c2s: str = ""  # "host:port" it listens on for clients; "" unknown (or not yet listening)


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    partitions: int
    routers: dict[str, int]  # live router id -> partitions it holds a lease on
    unowned_partitions: int  # routing partitions no router holds
    # every partitioned role (route, presence, roster): member id -> partitions held;
    # the key "" counts the partitions nobody holds
    roles: dict[str, dict[str, int]]
    connection_managers: list[ConnectionManagerInfo]
    sessions: int


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A FAST token (XEP-0484) as the operator sees it: whose client, which slot, until when."""

    client_id: str
    slot: str
    mechanism: str
    user_agent: str
    created_at: str
    expires_at: str


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What became of one entry of a bulk import, in the order given."""

    jid: str  # prepared, or as given when it is not a usable JID
    result: Outcome
    reason: str = ""  # why an entry is invalid


@dataclass(frozen=True, slots=True)
class PlannedAccount:
    """A valid import entry: the prepared bare JID and a password or ready keys."""

    jid: str
    password: str | None = None
    creds: StoredCredentials | None = None


@dataclass(frozen=True, slots=True)
class RosterImportResult:
    """What became of one account's roster of a roster import, in the order given."""

    jid: str  # prepared, or as given when it is not a usable JID
    result: Literal["imported", "invalid"]
    items: int = 0  # items stored (each replacing one already there, if any)
    pushed: int = 0  # roster pushes sent to online resources (RFC 6121 §2.1.6)
    reason: str = ""


ROLES = ("route", "presence", "roster", "muc", "pubsub")


def bare_jid(text: str, domain: str | Collection[str]) -> str:
    """A bare account JID of a served domain (one, or the set of them), prepared (RFC 7622)."""
    domains = (domain,) if isinstance(domain, str) else sorted(domain)
    try:
        jid = JID.parse(text)
    except JIDError as exc:
        raise AdminError(f"not a JID: {exc}") from None
    if jid.local is None or jid.resource is not None:
        raise AdminError(f"{text}: give a bare JID like alice@{domains[0]}")
    if jid.domain not in domains:
        raise AdminError(f"{text}: this cluster serves {', '.join(domains)}")
    return jid.bare_str


def full_jid(text: str, domain: str) -> str:
    try:
        jid = JID.parse(text)
    except JIDError as exc:
        raise AdminError(f"not a JID: {exc}") from None
    if jid.local is None or jid.resource is None:
        raise AdminError(f"{text}: give a full JID like alice@{domain}/phone")
    return str(jid)


def _given_jid(entry: object) -> str:
    jid = entry.get("jid") if isinstance(entry, dict) else None
    return jid if isinstance(jid, str) else ""


def _entry(entry: object, fields: Collection[str]) -> tuple[dict[str, Any], str]:
    """An entry of an import file: a JSON object of known ``fields`` with a string 'jid'."""
    if not isinstance(entry, dict):
        raise AdminError("not a JSON object")
    unknown = sorted(str(k) for k in entry if k not in fields)
    if unknown:
        raise AdminError(f"unknown field(s) {', '.join(unknown)}")
    jid = entry.get("jid")
    if not isinstance(jid, str):
        raise AdminError("'jid' is missing or not a string")
    return entry, jid


def plan_entry(entry: object, domain: str | Collection[str], min_iterations: int = MIN_ITERATIONS
               ) -> PlannedAccount:
    """One import entry, checked: ``{"jid", "password"}`` or ``{"jid", "scram"}`` (the JSON
    form of shared/xmpp/credentials.py); raises ValueError (AdminError among them) with a reason."""
    entry, jid = _entry(entry, IMPORT_FIELDS)
    bare = bare_jid(jid, domain)
    if ("password" in entry) == ("scram" in entry):
        raise AdminError("give either 'password' or 'scram'")
    if "scram" in entry:
        return PlannedAccount(bare, creds=from_json(entry["scram"], min_iterations))
    password = entry["password"]
    if not isinstance(password, str):
        raise AdminError("'password' is not a string")
    prepare_password(password)  # cheap; SCRAM's own SASLprep is checked when deriving
    return PlannedAccount(bare, password=password)


def plan_import(entries: Sequence[object], domain: str | Collection[str],
                min_iterations: int = MIN_ITERATIONS) -> list[PlannedAccount | ImportResult]:
    """Check every entry (none stops the others): a PlannedAccount for each valid one, an
    "invalid" ImportResult with the reason for the others; a JID listed twice (after
    preparation, RFC 7622 §3) is invalid the second time."""
    first: dict[str, int] = {}
    out: list[PlannedAccount | ImportResult] = []
    for i, entry in enumerate(entries):
        try:
            planned = plan_entry(entry, domain, min_iterations)
        except ValueError as exc:
            out.append(ImportResult(_given_jid(entry), "invalid", str(exc)))
            continue
        if first.setdefault(planned.jid, i) != i:
            out.append(ImportResult(planned.jid, "invalid",
                                    f"listed twice (first as entry {first[planned.jid]})"))
            continue
        out.append(planned)
    return out


def import_entries(doc: object) -> list[object]:
    """The entries of an import document: ``{"accounts": [...]}`` or the bare list."""
    if isinstance(doc, dict) and set(doc) == {"accounts"}:
        doc = doc["accounts"]
    if not isinstance(doc, list):
        raise AdminError('give {"accounts": [...]} or a JSON list of accounts')
    return doc


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise AdminError(f"'{what}' is not a non-empty string")
    if len(value.encode()) > MAX_ROSTER_TEXT_BYTES:
        raise AdminError(f"'{what}' is longer than {MAX_ROSTER_TEXT_BYTES} bytes")
    return value


def plan_roster_item(entry: object, owner: str) -> RosterItem:
    """One item of an imported roster, checked (RFC 6121 §2.1.2, states of Appendix A)."""
    entry, given = _entry(entry, ROSTER_ITEM_FIELDS)
    try:
        contact = JID.parse(given)
    except JIDError as exc:
        raise AdminError(f"not a JID: {exc}") from None
    if contact.resource is not None:  # §2.1.2.2: a bare JID
        raise AdminError(f"{given}: an item's JID is bare")
    jid = contact.bare_str
    if jid == owner:
        raise AdminError("the account itself is not a contact of its own roster")
    name = entry.get("name")
    if name is not None:
        name = _text(name, "name")
    groups = entry.get("groups", [])
    if not isinstance(groups, list) or len(groups) > MAX_GROUPS:
        raise AdminError(f"'groups' is not a list of at most {MAX_GROUPS} names")
    groups = [_text(g, "groups") for g in groups]
    if len(set(groups)) != len(groups):  # §2.3.3: a group listed twice is refused
        raise AdminError("a group is listed twice")
    sub = entry.get("subscription", "none")
    if sub not in ("none", "to", "from", "both"):
        raise AdminError(f"subscription {sub!r} is not none, to, from or both")
    ask = entry.get("ask")
    if ask not in (None, "subscribe"):
        raise AdminError(f"ask {ask!r}: only \"subscribe\" (§2.1.2.2)")
    approved = entry.get("approved", False)
    if not isinstance(approved, bool):
        raise AdminError("'approved' is not true or false")
    state = State(Subscription(sub), ask == "subscribe", False, approved)
    if not state.is_valid:
        raise AdminError(
            f"subscription {sub!r}" + (" with ask" if state.pending_out else "")
            + (" pre-approved" if approved else "")
            + " is not a state of RFC 6121 Appendix A (§3.4: pre-approved only without "
              "'from'; ask only without 'to')")
    return RosterItem(jid, name, tuple(groups), state)


def plan_roster(entry: object, domain: str | Collection[str]) -> tuple[str, list[RosterItem]]:
    """One account's roster, checked: ``{"jid", "items": [...]}``.  A bad item refuses the
    whole roster (the reason names it: index and JID), so no account gets half of one."""
    entry, jid = _entry(entry, ROSTER_FIELDS)
    owner = bare_jid(jid, domain)
    items = entry.get("items")
    if not isinstance(items, list):
        raise AdminError("'items' is missing or not a list")
    if len(items) > MAX_ROSTER_ITEMS:
        raise AdminError(f"{len(items)} items: at most {MAX_ROSTER_ITEMS} per roster")
    out: list[RosterItem] = []
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        try:
            planned = plan_roster_item(item, owner)
        except ValueError as exc:
            raise AdminError(f"item {i} ({_given_jid(item) or 'no jid'}): {exc}") from None
        if first.setdefault(planned.jid, i) != i:
            raise AdminError(f"item {i} ({planned.jid}): listed twice (first as item "
                             f"{first[planned.jid]})")
        out.append(planned)
    return owner, out


def roster_entries(doc: object) -> list[object]:
    """The entries of a roster import document: ``{"rosters": [...]}`` or the bare list."""
    if isinstance(doc, dict) and set(doc) == {"rosters"}:
        doc = doc["rosters"]
    if not isinstance(doc, list):
        raise AdminError('give {"rosters": [...]} or a JSON list of rosters')
    return doc


def count_results(results: Sequence[ImportResult]) -> dict[str, int]:
    counts = {"created": 0, "exists": 0, "invalid": 0}
    for r in results:
        counts[r.result] += 1
    return counts


def _credentials(planned: list[PlannedAccount], iterations: int
                 ) -> list[StoredCredentials | str]:
    """Ready keys as given; passwords derived (PBKDF2: run it in a thread), or the reason
    they cannot be."""
    out: list[StoredCredentials | str] = []
    for p in planned:
        if p.creds is not None:
            out.append(p.creds)
            continue
        try:
            out.append(derive_credentials(p.password or "", iterations))
        except ValueError as exc:
            out.append(f"unusable password: {exc}")
    return out


class ClusterAdmin:
    """Account, session and status operations; ``bus`` is needed only to kick sessions."""

    def __init__(
        self,
        redis: aioredis.Redis,
        db: Database,
        domain: str,
        partitions: int,
        service: str,
        bus: Bus | None = None,
        scram_iterations: int = 10_000,
        scram_min_iterations: int = MIN_ITERATIONS,
        domains_file: str = "",
    ) -> None:
        self._r = redis
        self.domain = domain  # the main domain; `served` says which others are
        self.domains = DomainStore(db)
        main = VirtualHost(domain)
        self.static = {main.name: main}  # configuration: not added or removed here
        if domains_file:
            for name, host in load_file(domains_file).items():
                self.static.setdefault(name, host)
        self.partitions = partitions
        self.accounts = AccountStore(db, service)
        self.rosters = RosterStore(db, service)
        self.fast_tokens = FastTokenStore(db)
        self._service = service
        self.sessions_store = SessionStore(redis, service)
        self._bus = bus
        self._iterations = scram_iterations
        self._min_iterations = scram_min_iterations  # for imported keys

    # ---- virtual hosts (shared/store/domains.py) ---------------------------------------------

    async def hosts(self) -> dict[str, VirtualHost]:
        """Every domain served: the configured ones and the database's."""
        hosts = await self.domains.all()
        hosts.update(self.static)
        return hosts

    async def served(self) -> frozenset[str]:
        return frozenset(await self.hosts())

    async def list_domains(self) -> list[dict[str, Any]]:
        """Each domain with its settings, where it comes from and its number of accounts."""
        hosts = await self.hosts()
        users = await self.domains.user_counts()
        return [{"name": name, "source": h.source, "settings": h.settings_json(),
                 "backend": h.backend, "users": users.get(name, 0)}
                for name, h in sorted(hosts.items())]

    async def add_domain(self, name: str, settings: object = None) -> VirtualHost:
        """Serve one more domain (DomainExists, or DomainError for a bad name/settings)."""
        host = VirtualHost.from_json(name, settings, "database")
        if host.name in self.static:
            raise DomainExists(f"{host.name} is already served (configuration)")
        await self.domains.add(host)
        await self._domains_changed()
        return host

    async def update_domain(self, name: str, settings: object) -> VirtualHost | None:
        """New settings for a domain added at run time (None: no such domain)."""
        host = VirtualHost.from_json(name, settings, "database")
        if host.name in self.static:
            raise DomainError(f"{host.name} is configured by the environment or the "
                              "domains file: change it there")
        if not await self.domains.update(host):
            return None
        await self._domains_changed()
        return host

    async def remove_domain(self, name: str) -> bool:
        """Stop serving a domain added at run time: new streams to it get host-unknown (its
        accounts stay, and come back with it)."""
        name = prepare_domain(name)
        if name in self.static:
            raise DomainError(f"{name} is configured by the environment or the domains "
                              "file: remove it there")
        if not await self.domains.remove(name):
            return False
        await self._domains_changed()
        return True

    async def _domains_changed(self) -> None:
        """Tell every service at once (best effort: they also reload periodically)."""
        if self._bus is None:
            return
        try:
            await announce(self._bus)
            await self._bus.flush()
        except Exception as exc:
            log.warning("could not announce the domain change (services see it at their "
                        "next reload): %s", exc)

    # ---- accounts --------------------------------------------------------------------------

    async def create_user(self, jid: str, password: str) -> str:
        """Raise AccountExists, or AdminError for a bad JID or password."""
        bare = bare_jid(jid, await self.served())
        creds = await self._derive(password)
        await self.accounts.create(bare, creds)
        await self._account_changed(bare)
        return bare

    async def set_password(self, jid: str, password: str) -> bool:
        """False when there is no such account; AdminError on a domain whose passwords are
        the platform's (a token or HTTP backend: a password set here would never be asked)."""
        hosts = await self.hosts()
        bare = bare_jid(jid, frozenset(hosts))
        host = hosts[bare.rpartition("@")[2]]
        if host.backend != "internal":
            raise AdminError(
                f"{bare}: {host.name} logs its users in through its {host.backend} "
                "authentication backend (the platform's identity system); change the "
                "password there")
        return await self.accounts.set_credentials(bare, await self._derive(password))

    async def delete_user(self, jid: str) -> tuple[bool, list[str]]:
        """Delete the account, then kick its open sessions; (deleted, full JIDs kicked)."""
        bare = bare_jid(jid, await self.served())
        deleted = await self.accounts.delete(bare)
        if deleted:
            await self.sessions_store.forget_account(bare)  # its soft state in Redis
            await self._account_changed(bare)
        kicked: list[str] = []
        if self._bus is not None:
            for resource in await self.sessions_store.get(bare):
                if await self.kick(f"{bare}/{resource}") is not None:
                    kicked.append(f"{bare}/{resource}")
        return deleted, kicked

    async def _account_changed(self, bare: str) -> None:
        """Routers cache whether an account exists: tell them at once (best effort; without
        a bus they see it when the entry expires, STANZAD_CACHE_TTL_S)."""
        if self._bus is None:
            return
        try:
            p = subjects.partition(bare, self.partitions)
            await self._bus.publish(subjects.session_events(p), session_event(bare).encode())
            await self._bus.flush()
        except Exception as exc:  # the account change itself is done and durable
            log.warning("could not tell the routers about %s: %s", bare, exc)

    async def import_accounts(self, entries: Sequence[object]) -> list[ImportResult]:
        """Create many accounts, each from a password or ready SCRAM keys; never overwrites
        one.  Every entry gets a result, in order: created, exists, or invalid with a reason.

        PostgreSQL sees one INSERT per 500 accounts (AccountStore.create_many); the routers
        one session event per partition touched (per 500 JIDs) rather than one per account,
        so none keeps a cached "no such account" for an imported one."""
        plan = plan_import(entries, await self.served(), self._min_iterations)
        todo = [p for p in plan if isinstance(p, PlannedAccount)]
        if any(p.password is not None for p in todo):
            creds = await asyncio.to_thread(_credentials, todo, self._iterations)
        else:
            creds = _credentials(todo, self._iterations)
        ready = [(p.jid, c) for p, c in zip(todo, creds, strict=True)
                 if isinstance(c, StoredCredentials)]
        created = dict(zip((jid for jid, _ in ready),
                           await self.accounts.create_many(ready), strict=True))
        await self._accounts_created([jid for jid, new in created.items() if new])
        reasons = {p.jid: c for p, c in zip(todo, creds, strict=True) if isinstance(c, str)}
        out: list[ImportResult] = []
        for p in plan:
            if isinstance(p, ImportResult):
                out.append(p)
            elif p.jid in reasons:
                out.append(ImportResult(p.jid, "invalid", reasons[p.jid]))
            else:
                out.append(ImportResult(p.jid, "created" if created[p.jid] else "exists"))
        return out

    async def _accounts_created(self, bares: list[str]) -> None:
        """`_account_changed` for many accounts: one bulk session event per partition (and
        per EVENT_JIDS JIDs), one flush."""
        if self._bus is None or not bares:
            return
        by_partition: dict[int, list[str]] = {}
        for bare in bares:
            by_partition.setdefault(subjects.partition(bare, self.partitions), []).append(bare)
        try:
            for p, jids in by_partition.items():
                for start in range(0, len(jids), EVENT_JIDS):
                    event = accounts_event(jids[start:start + EVENT_JIDS])
                    await self._bus.publish(subjects.session_events(p), event.encode())
            await self._bus.flush()
        except Exception as exc:  # the accounts are created and durable
            log.warning("could not tell the routers about %d imported accounts: %s",
                        len(bares), exc)

    # ---- rosters ---------------------------------------------------------------------------

    async def import_rosters(self, entries: Sequence[object]) -> list[RosterImportResult]:
        """Store each account's roster items (RFC 6121 §2), replacing items already there
        and leaving the others, and push every stored item to the account's online resources
        (§2.1.6, through their connection managers as the roster service does).  Every entry
        gets a result, in order; an invalid one (bad JID or item, no such account, listed
        twice) changes nothing.  Versions: see RosterStore.import_items."""
        out: list[RosterImportResult] = []
        seen: dict[str, int] = {}
        served = await self.served()
        for i, entry in enumerate(entries):
            try:
                owner, items = plan_roster(entry, served)
                if seen.setdefault(owner, i) != i:
                    raise AdminError(f"listed twice (first as entry {seen[owner]})")
                if not await self.accounts.exists(owner):
                    raise AdminError(f"{owner}: no such account (import the accounts first)")
            except ValueError as exc:
                out.append(RosterImportResult(_given_jid(entry), "invalid", reason=str(exc)))
                continue
            stored = await self.rosters.import_items(owner, items)
            pushed = await self._push_roster(owner, stored)
            out.append(RosterImportResult(owner, "imported", len(stored), pushed))
        return out

    async def _push_roster(self, owner: str, items: list[RosterItem]) -> int:
        """One push per item and resource, in version order; best effort: the items are
        stored, and a client that misses a push gets them at its next roster get (§2.6)."""
        if self._bus is None or not items:
            return 0
        pushed = 0
        try:
            for resource, record in (await self.sessions_store.get(owner)).items():
                full = f"{owner}/{resource}"
                for item in items:
                    env = Envelope(Kind.IQ, to=full, from_="", type="result",
                                   origin=self._service,
                                   payload=push_iq(full, item.ver, item.xml()))
                    await self._bus.publish(subjects.connection_manager(record.cm_id),
                                            env.encode())
                    pushed += 1
            await self._bus.flush()
        except Exception as exc:
            log.warning("could not push the imported roster of %s: %s", owner, exc)
        return pushed

    async def tokens(self, jid: str) -> list[TokenInfo]:
        """The account's FAST tokens (XEP-0484): one per client and slot, never the token."""
        bare = bare_jid(jid, self.domain)
        return [TokenInfo(r.client_id, r.slot, r.mechanism, r.user_agent,
                          r.created_at.isoformat(), r.expires_at.isoformat())
                for r in await self.fast_tokens.list(bare)]

    async def revoke_tokens(self, jid: str, client_id: str | None = None) -> int:
        """Revoke the account's FAST tokens (of one client); how many.  The client's next
        login with one fails and it falls back to its password (XEP-0484 §6.1)."""
        return await self.fast_tokens.revoke(bare_jid(jid, self.domain), client_id)

    async def list_users(self, domain: str | None = None) -> list[str]:
        return await self.accounts.list(domain or self.domain)

    async def _derive(self, password: str) -> StoredCredentials:
        if not password:
            raise AdminError("the password is empty")
        try:  # PBKDF2 for two SCRAM hashes: keep it off the event loop
            return await asyncio.to_thread(derive_credentials, password, self._iterations)
        except ValueError as exc:
            raise AdminError(f"unusable password: {exc}") from None

    # ---- sessions --------------------------------------------------------------------------

    async def sessions(self, limit: int | None = None) -> list[SessionInfo]:
        """Bound resources, by connection manager (dead ones included until reaped); at most
        ``limit`` of them."""
        out: list[SessionInfo] = []
        for cm_id, alive in (await self.sessions_store.connection_managers()).items():
            addresses = await self.sessions_store.cm_addresses(cm_id)
            for full in await self.sessions_store.cm_sessions(cm_id):
                if limit is not None and len(out) >= limit:
                    return out
                bare, resource = split_full(full)
                record = (await self.sessions_store.get(bare)).get(resource)
                if record is None or record.cm_id != cm_id:
                    continue  # index entry of a session already gone or moved
                out.append(_info(full, record, alive, addresses.get(full, "")))
        return out

    async def session(self, jid: str) -> SessionInfo | None:
        full = full_jid(jid, self.domain)
        bare, resource = split_full(full)
        record = (await self.sessions_store.get(bare)).get(resource)
        if record is None:
            return None
        alive = bool(await self._r.exists(keys.cm_alive(record.cm_id)))
        address = await self._r.hget(keys.cm_addresses(record.cm_id), full)
        return _info(full, record, alive, address.decode() if address else "")

    async def kick(self, jid: str, condition: str = KICK_CONDITION) -> SessionInfo | None:
        """Ask the owning connection manager to close the session; None when not bound.

        The KICK's id is the session id of the record, so a newer session that took the same
        full JID in the meantime is left alone.  Raises BusUnavailable when NATS is down."""
        if self._bus is None:
            raise AdminError("kicking needs a bus connection")
        info = await self.session(jid)
        if info is None:
            return None
        kick = Envelope(Kind.KICK, to=info.jid, from_="", id=info.session_id,
                        origin="admin", payload=condition.encode())
        await self._bus.publish(subjects.connection_manager(info.cm_id), kick.encode())
        await self._bus.flush()
        return info

    # ---- cluster ---------------------------------------------------------------------------

    async def _role(self, role: str) -> dict[str, int]:
        now_ms = int(time.time() * 1000)
        members = await self._r.zrangebyscore(keys.members(role), now_ms, "+inf")
        async with self._r.pipeline(transaction=False) as pipe:
            for p in range(self.partitions):
                pipe.get(keys.partition_lease(role, p))
            leases = await pipe.execute()
        held = {m.decode(): 0 for m in sorted(members)}
        held[""] = 0
        for owner in leases:
            name = owner.decode() if owner else ""
            held[name] = held.get(name, 0) + 1
        return held

    async def status(self) -> ClusterStatus:
        roles = {role: await self._role(role) for role in ROLES}
        route = dict(roles["route"])
        unowned = route.pop("")
        cms: list[ConnectionManagerInfo] = []
        for cm_id, alive in (await self.sessions_store.connection_managers()).items():
            ttl_ms = await self._r.pttl(keys.cm_alive(cm_id))
            count = await self._r.scard(keys.cm_sessions(cm_id))
            c2s = (await self._r.get(keys.cm_alive(cm_id)) or b"").decode()
            cms.append(ConnectionManagerInfo(cm_id, alive, max(0, ttl_ms) / 1000, int(count),
                                             c2s if ":" in c2s else ""))
        return ClusterStatus(
            partitions=self.partitions,
            routers=route,
            unowned_partitions=unowned,
            roles=roles,
            connection_managers=cms,
            sessions=sum(c.sessions for c in cms if c.alive),
        )


def _info(full: str, record: SessionRecord, alive: bool, address: str = "") -> SessionInfo:
    return SessionInfo(full, record.cm_id, record.session_id, record.priority,
                       record.available, alive, address)
