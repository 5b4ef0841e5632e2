"""The presence service: RFC 6121 §4 for the users of the partitions it owns.

Input (``stanzad.presence.<p>``, p = partition of the user): the user's broadcast presence
and directed presence from connection managers, session ends, and probes from the roster
service.  Fan-out never costs one bus message per contact: the contacts' sessions are read in
one pipeline and each connection manager gets one FANOUT envelope with all its recipients;
probe answers for a newly available resource travel as one BATCH envelope.

This service also reaps the sessions of connection managers whose heartbeat expired and
tells their contacts that those users went unavailable.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import defaultdict
from xml.sax.saxutils import quoteattr

from shared.bus import subjects
from shared.bus.envelope import FANOUT_SEPARATOR, Envelope, Kind, decoded
from shared.cluster.partitioned import PartitionedService
from shared.runtime.settings import PresenceSettings
from shared.store import keys
from shared.store.account_data import AccountDataStore
from shared.store.presence import LastActivityStore, OfflineStore, PresenceStore
from shared.store.roster import RosterStore
from shared.store.sessions import SessionRecord, SessionStore
from shared.xmpp import avatar, ns
from shared.xmpp.blocking import is_blocked
from shared.xmpp.jid import bare_of
from shared.xmpp.parser import parse_fragment
from shared.xmpp.stanza import with_to
from shared.xmpp.subscription import Subscription

from . import metrics

log = logging.getLogger(__name__)

SERVICE = "presence"
MAX_PRESENCE_BYTES = 64 * 1024
MAX_STATUS_CHARS = 1024
SUBSCRIBED_TO = (Subscription.TO, Subscription.BOTH)  # the user receives the contact's presence
SUBSCRIBED_FROM = (Subscription.FROM, Subscription.BOTH)  # the contact receives the user's
# bare JID -> (its session table, its blocklist), as `_session_tables` reads them
Tables = dict[str, tuple[dict[str, SessionRecord], frozenset[str]]]


class PresenceService(PartitionedService):
    name = SERVICE
    role = "presence"
    uses_database = True  # rosters, offline messages, block lists

    def __init__(self, settings: PresenceSettings) -> None:
        super().__init__(
            settings,
            settings.presence_id or f"presence-{secrets.token_hex(4)}",
            lambda p: [subjects.presence(p)],
            metrics.PARTITIONS.set,
        )
        self.sessions = SessionStore(self.redis, SERVICE)
        self.rosters = RosterStore(self.db, SERVICE)
        self.offline = OfflineStore(self.db, SERVICE)
        self.account_data = AccountDataStore(self.db, SERVICE)
        self.presence = PresenceStore(self.redis, self.rosters, SERVICE)
        self.last_activity = LastActivityStore(self.db, SERVICE)

    async def start(self) -> None:
        await super().start()
        self.tasks.append(asyncio.create_task(self._reaper()))

    # ---- input -----------------------------------------------------------------------------

    async def handle_batch(self, batch: list[tuple[str, bytes]]) -> None:
        for env in decoded(batch):
            if env.kind is not Kind.PRESENCE:
                continue
            try:
                await self._handle(env)
            except Exception:
                log.exception("presence handling failed")

    async def _handle(self, env: Envelope) -> None:
        if env.type == "probe":
            await self._probe(env.from_, env.to)
        elif not env.to:
            if env.type == "unavailable":
                await self._unavailable(env.from_, env.origin, env.payload)
            elif env.type == "":
                await self._available(env.from_, env.origin, env.payload)
        elif env.type in ("", "unavailable"):
            await self._directed(env)

    # ---- broadcast presence (RFC 6121 §4.2, §4.4, §4.5) -----------------------------------

    async def _available(self, full: str, origin: str, payload: bytes) -> None:
        bare = bare_of(full)
        priority = _priority(payload)
        cm_id, _, session_id = origin.partition("/")
        record = SessionRecord(cm_id, session_id, priority, True) if session_id else None
        payload = await self._with_avatar(bare, payload)
        version, initial, items = await self.presence.go_available(full, record, payload)
        if version:  # the router reads availability and priority from the table (§8.5.2)
            await self.session_event(bare, version)
        metrics.BROADCASTS.labels("available").inc()
        tables = None
        if initial:
            tables = await self._initial(full, items, priority)
        await self._broadcast(full, payload, items, tables)
        await self._to_pep(full, origin, "", payload)

    async def _with_avatar(self, bare: str, payload: bytes) -> bytes:
        """XEP-0398 §4: the account's current avatar hash in its presence, once the pubsub
        or roster service converted an avatar (no key: the presence as the client sent it)."""
        try:
            photo_hash = await self.redis.get(keys.avatar_hash(bare))
        except Exception as exc:  # the broadcast matters more than the hash
            log.warning("could not read the avatar hash: %s", exc)
            return payload
        return payload if photo_hash is None else avatar.with_update(payload, photo_hash.decode())

    async def _unavailable(self, full: str, origin: str, payload: bytes) -> None:
        bare = bare_of(full)
        await self._update_session(full, origin, 0, False)
        was_available, directed = await self.presence.set_unavailable(full)
        if not was_available:
            # directed presence sent without initial presence (a bot joining a room, XEP-0045
            # §7.2) still ends with the session (§4.6.3); there was no broadcast to follow
            await self._end_directed(full, payload, directed)
            return
        metrics.BROADCASTS.labels("unavailable").inc()
        await self._to_pep(full, origin, "unavailable", payload)
        [left] = await self.presence.available([bare])
        if not left:  # XEP-0012 §4: the account's last activity, for its contacts to ask
            try:
                await self.last_activity.went_away(bare, _status(payload))
            except Exception as exc:  # the broadcast matters more than this record
                log.warning("could not record the last activity: %s", exc)
        _, items, _ = await self.rosters.load(bare)
        await self._broadcast(full, payload, items)
        # §4.6.3: those who got directed presence learn it ended (the broadcast told those
        # subscribed already)
        await self._end_directed(full, payload, [
            t for t in directed if (item := items.get(bare_of(t))) is None
            or item.state.subscription not in SUBSCRIBED_FROM])

    async def _end_directed(self, full: str, payload: bytes, targets: list[str]) -> None:
        for target in targets:
            await self.route(Envelope(Kind.PRESENCE, to=target, from_=full, type="unavailable",
                                       origin=SERVICE, payload=with_to(payload, target)))

    async def _update_session(self, full: str, origin: str, priority: int, avail: bool) -> None:
        """The router reads availability and priority from the session table (§8.5.2)."""
        cm_id, _, session_id = origin.partition("/")
        if not session_id:
            return
        version = await self.sessions.update(
            full, SessionRecord(cm_id, session_id, priority, avail)
        )
        if version:
            await self.session_event(bare_of(full), version)

    async def _broadcast(
        self, full: str, payload: bytes, items: dict,  # type: ignore[type-arg]
        known: Tables | None = None,
    ) -> None:
        """To every contact with a 'from' or 'both' subscription and to the user's own
        available resources, the new one included (§4.2.2, §4.4.2): one envelope per
        connection manager.  `known`: session tables the caller already read (initial
        presence reads the user's and its local contacts' once, for both directions)."""
        bare = bare_of(full)
        contacts = [c for c, item in items.items() if item.state.subscription in SUBSCRIBED_FROM]
        accounts = self.destinations.accounts
        local = [c for c in contacts if c.partition("@")[2] in accounts]
        targets = [bare, *local]
        by_cm: dict[str, list[str]] = defaultdict(list)
        if known is not None and all(t in known for t in targets):
            tables = [known[t] for t in targets]
        else:
            tables = await self._session_tables(targets)
        mine = tables[0][1]
        for owner, (table, theirs) in zip(targets, tables, strict=True):
            if owner != bare and (is_blocked(mine, owner) or is_blocked(theirs, full)):
                continue  # XEP-0191 §3.3, §3.4: no presence across a block
            for resource, record in table.items():
                if record.available or f"{owner}/{resource}" == full:
                    by_cm[record.cm_id].append(f"{owner}/{resource}")
        for cm_id, recipients in by_cm.items():
            env = Envelope(Kind.FANOUT, to=FANOUT_SEPARATOR.join(recipients), from_=full,
                           origin=SERVICE, payload=payload)
            await self.publish(subjects.connection_manager(cm_id), env)
        metrics.FANOUT_RECIPIENTS.observe(sum(len(r) for r in by_cm.values()))
        await self._broadcast_remote(full, payload, contacts, mine)

    async def _broadcast_remote(
        self, full: str, payload: bytes, contacts: list[str], blocked: frozenset[str]
    ) -> None:
        """Contacts on other servers get the presence addressed to their bare JID, through
        the s2s gateway; their server delivers it to their resources (RFC 6121 §4.2.2)."""
        for contact in contacts:
            if (contact.partition("@")[2] in self.destinations.accounts
                    or is_blocked(blocked, contact)):
                continue
            await self.route(Envelope(Kind.PRESENCE, to=contact, from_=full,
                                       origin=SERVICE, payload=with_to(payload, contact)))

    async def _session_tables(
        self, bares: list[str]
    ) -> list[tuple[dict[str, SessionRecord], frozenset[str]]]:
        """(sessions, blocklist) of each bare JID: one Redis round trip and one PostgreSQL
        query, at once."""

        async def sessions() -> list[dict[str, SessionRecord]]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for bare in bares:
                    pipe.hgetall(keys.sessions(bare))
                replies = await pipe.execute()
            return [{k.decode(): SessionRecord.decode(v) for k, v in r.items()}
                    for r in replies]

        tables, routing = await asyncio.gather(sessions(), self.account_data.routing(bares))
        return [(t, blocked) for t, (_, blocked) in zip(tables, routing, strict=True)]

    async def _initial(self, full: str, items: dict, priority: int) -> Tables:  # type: ignore[type-arg]
        """A newly available resource gets its contacts' presence (§4.3: the probes are
        answered here for local contacts), pending subscription requests (§3.1.3) and, with
        a non-negative priority, the messages stored while it was offline (XEP-0160).

        Returns the session tables it read: the user's and those of every local contact
        in either direction, so that the broadcast that follows need not read them again."""
        bare, _, resource = full.partition("/")
        accounts = self.destinations.accounts
        out: list[bytes] = []
        wanted = [c for c, item in items.items() if item.state.subscription in SUBSCRIBED_TO]
        local = [c for c in wanted if c.partition("@")[2] in accounts]
        either = [c for c, item in items.items() if c.partition("@")[2] in accounts and (
            item.state.subscription in SUBSCRIBED_TO or item.state.subscription in SUBSCRIBED_FROM
        )]
        targets = [bare, *either]
        known = dict(zip(targets, await self._session_tables(targets), strict=True))
        mine = known[bare][1]
        presences_of = await self.presence.available(local) if local else []
        for contact, presences in zip(local, presences_of, strict=True):
            theirs = known[contact][1]
            if is_blocked(mine, contact) or is_blocked(theirs, full):
                continue
            out.extend(with_to(stanza, full) for stanza in presences.values())
        for contact in wanted:  # §4.3.1: remote contacts are probed through their server
            if contact.partition("@")[2] not in accounts and not is_blocked(mine, contact):
                probe = (f'<presence xmlns="{ns.CLIENT}" type="probe" from={quoteattr(bare)} '
                         f"to={quoteattr(contact)}/>").encode()
                await self.route(Envelope(Kind.PRESENCE, to=contact, from_=bare, type="probe",
                                           origin=SERVICE, payload=probe))
        for contact, item in items.items():
            if item.state.pending_in:
                out.append(
                    f'<presence xmlns="{ns.CLIENT}" from={quoteattr(contact)} '
                    f'to={quoteattr(bare)} type="subscribe"/>'.encode()
                )
        record = known[bare][0].get(resource)  # None: the session ended meanwhile
        if record is None:
            return known
        if out:
            env = Envelope(Kind.BATCH, to=full, from_="", origin=SERVICE, payload=b"".join(out))
            await self.publish(subjects.connection_manager(record.cm_id), env)
        if priority >= 0:
            for message in await self.offline.take_all(bare):
                metrics.OFFLINE_DELIVERED.inc()
                env = Envelope(Kind.MESSAGE, to=full, from_="", type="chat", origin=SERVICE,
                               payload=message)
                await self.publish(subjects.connection_manager(record.cm_id), env)
        return known

    async def _to_pep(self, full: str, origin: str, type_: str, payload: bytes) -> None:
        """The user's personal eventing service learns of each broadcast presence
        (XEP-0163 §6.2: a resource coming online, or with new XEP-0115 caps, gets the last
        published items it wants): one envelope to the user's pubsub partition."""
        bare = bare_of(full)
        p = subjects.partition(bare, self.settings.partitions)
        await self.publish(subjects.pubsub(p), Envelope(
            Kind.PRESENCE, to=bare, from_=full, type=type_, origin=origin, payload=payload))

    # ---- directed presence (§4.6) and probes (§4.3) ---------------------------------------

    async def _directed(self, env: Envelope) -> None:
        bare = env.from_bare
        target_bare = env.to_bare
        item = await self.rosters.item(bare, target_bare)
        if item is None or item.state.subscription not in SUBSCRIBED_FROM:
            await self.presence.directed(env.from_, env.to, env.type == "")
        metrics.BROADCASTS.labels("directed").inc()
        await self.route(env)

    async def _probe(self, prober: str, user: str) -> None:
        """Answer a probe for ``user`` from ``prober`` if the prober is subscribed."""
        item = await self.rosters.item(user, bare_of(prober))
        if item is None or item.state.subscription not in SUBSCRIBED_FROM:
            return
        [presences] = await self.presence.available([user])
        for resource, stanza in presences.items():
            await self.route(Envelope(Kind.PRESENCE, to=prober, from_=f"{user}/{resource}",
                                       origin=SERVICE, payload=with_to(stanza, prober)))

    # ---- output ----------------------------------------------------------------------------


    # ---- sessions of dead connection managers ----------------------------------------------

    async def _reaper(self) -> None:
        """One process at a time removes the sessions of connection managers that died."""
        interval = max(1.0, self.settings.session_ttl_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._reap_once(interval)
            except Exception as exc:
                log.warning("reaper round failed: %s", exc)

    async def _reap_once(self, interval: float) -> None:
        lock = keys.reaper_lock()
        if not await self.redis.set(lock, self.member_id, nx=True, px=int(interval * 2000)):
            return
        for cm_id, alive in (await self.sessions.connection_managers()).items():
            if alive:
                continue
            removed = await self.sessions.reap(cm_id)
            metrics.REAPED.inc(len(removed))
            log.info("reaped %d sessions of dead connection manager %s", len(removed), cm_id)
            for full, version in removed:
                bare = bare_of(full)
                await self.session_event(bare, version)
                p = subjects.partition(bare, self.settings.partitions)
                # the user's contacts learn that the user went away (RFC 6121 §4.5.2)
                gone = f'<presence xmlns="{ns.CLIENT}" from={quoteattr(full)} type="unavailable"/>'
                env = Envelope(Kind.PRESENCE, to="", from_=full, type="unavailable",
                               origin=SERVICE, payload=gone.encode())
                await self.publish(subjects.presence(p), env)


def _status(payload: bytes) -> str:
    """The <status/> of an unavailable presence (RFC 6121 §4.7.2.2), at most 1 KiB."""
    if b"<status" not in payload:
        return ""
    try:
        text = parse_fragment(payload, MAX_PRESENCE_BYTES).findtext(f"{{{ns.CLIENT}}}status")
    except Exception:
        return ""
    return (text or "")[:MAX_STATUS_CHARS]


def _priority(payload: bytes) -> int:
    """RFC 6121 §4.7.2.3: an integer from -128 to 127; absent or invalid means 0."""
    if b"<priority" not in payload:
        return 0
    try:
        text = parse_fragment(payload, MAX_PRESENCE_BYTES).findtext(f"{{{ns.CLIENT}}}priority")
        return max(-128, min(127, int((text or "0").strip())))
    except Exception:
        return 0
